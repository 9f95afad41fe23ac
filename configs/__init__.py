"""ml_collections config files (`get_config()`); `base.py` holds every default."""
