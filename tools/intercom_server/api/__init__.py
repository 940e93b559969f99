"""The HTTP layer, a module per resource; `app.py` composes them."""
