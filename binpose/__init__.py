"""binpose: binary neural networks with learned binarizers, packed into bits and served on CPUs."""

__version__ = "0.1.0"
