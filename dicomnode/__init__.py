"""dicomnode: an edge DICOM node that tags X-ray views (frontal AP vs lateral LA)."""

__version__ = "0.1.0"
SOFTWARE_NAME = "dicomnode"
