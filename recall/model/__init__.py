"""Training: the matrix, ALS, the item index, item-item neighbours, rankings."""
