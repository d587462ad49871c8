"""medasl: a declarative language and compiler for medical image analysis pipelines."""

__version__ = "0.1.0"
