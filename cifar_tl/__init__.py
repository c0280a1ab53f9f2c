"""cifar_tl: transfer learning with few labels, the library behind the cifar-tl book."""

__version__ = "0.2.0"
