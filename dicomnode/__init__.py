"""dicomnode: an edge DICOM node that tags X-ray views (AP, PA, lateral, or abstain)."""

__version__ = "0.1.0"
SOFTWARE_NAME = "dicomnode"
# The node's DICOM implementation identity (PS3.7 D.3.3.2, PS3.10 7.1): in every association it
# opens or accepts and in the file meta of every file it writes. A UUID-derived UID (PS3.5 B.2),
# generated once for this product; the version name changes with each release (SH, 16 chars).
IMPLEMENTATION_CLASS_UID = "2.25.281539121214698369224413842993380818512"
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__}"[:16]
