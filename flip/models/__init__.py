"""The two towers and the FLIP model that joins them."""
