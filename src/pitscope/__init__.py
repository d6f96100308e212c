"""pitscope: find pitting and other surface defects from images, trained on defect-free images alone."""

__version__ = "0.1.0"
