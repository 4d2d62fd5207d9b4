"""The node's DICOM identity: who it says it is in associations and in the files it writes."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE

from dicomnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def set_implementation(file_meta: Dataset) -> None:
    """Name the node as the implementation that wrote a file (PS3.10 7.1)."""
    file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME


def node_ae(ae_title: str) -> AE:
    """A pynetdicom AE that introduces itself as dicomnode in A-ASSOCIATE (PS3.7 D.3.3.2)."""
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae
