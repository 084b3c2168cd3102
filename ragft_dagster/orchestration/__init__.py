"""How the asset graph runs: its stages (one per asset group) and ``ragft run``'s walk over
them."""
