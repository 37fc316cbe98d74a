"""Chat: the side-by-side session (one 4-bit base, adapter per row) and the batched streaming generation under it."""
