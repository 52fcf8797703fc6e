"""Pure loss functions of tensors; shapes in docstrings, equations cited."""
