"""tech-llm-forge: the Gradio app (Hugging Face Spaces runs this file)."""
from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description="Start the tech-llm-forge workbench.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--auth", metavar="USER:PASSWORD",
                        help="Require a password locally (e.g. --auth admin:secret). None by default on localhost.")
    args = parser.parse_args()

    from workbench.ui.app import CSS, build_app

    demo = build_app()
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    from workbench.data import max_file_mb

    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, auth=auth, css=CSS,
                                                   max_file_size=f"{max_file_mb():.0f}mb")


if __name__ == "__main__":
    main()
