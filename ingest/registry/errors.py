"""The registry's exceptions, placed in the service's error tree (:mod:`rag.core.errors`).

NotFound
└── JobNotFound          the job id names no job
Conflict
└── JobNotRetryable      retry asked for a job that is not failed
InvalidRequest
└── InvalidCursor        a list cursor that this registry did not hand out
StoreUnavailable
└── RegistryUnavailable  the database cannot be reached or stays locked
"""

from __future__ import annotations

from rag.core.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable


class JobNotFound(NotFound):
    pass


class JobNotRetryable(Conflict):
    pass


class InvalidCursor(InvalidRequest):
    pass


class RegistryUnavailable(StoreUnavailable):
    pass
