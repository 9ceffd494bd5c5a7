"""One module per op family; each registers its benchmark cases when imported."""
