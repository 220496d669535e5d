"""Make pynetdicom accept C-STOREs of any SOP class a PACS listed, private ones included.

pynetdicom answers a C-STORE only for SOP classes it maps to its Storage service; a private class (a vendor's
raw data, a structured report it never heard of) is aborted on ("No supported service class available"), so
every instance of that class would be lost to the association's abort. A class C-FIND reported is registered
as a storage class before we negotiate for it, on the C-GET association and in the C-MOVE receiver alike.
"""

from __future__ import annotations

import threading

from pynetdicom import register_uid
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from contracts.sources import is_uid

_lock = threading.Lock()


def accept_as_storage(classes: list[str]) -> list[str]:
    """Register every unknown class of ``classes`` as a storage class; returns the classes usable in a
    presentation context (valid UIDs; a class another service owns, e.g. a query model, is left out)."""
    usable = []
    with _lock:
        for cls in classes:
            if not is_uid(cls):
                continue
            service = uid_to_service_class(cls)
            if service is ServiceClass:  # unknown to pynetdicom
                register_uid(cls, "HimigStorage_" + cls.replace(".", "_"), StorageServiceClass)
                service = StorageServiceClass
            if service is StorageServiceClass:
                usable.append(cls)
    return usable
