"""AWS-shaped errors.

Every error the emulator returns to a client is an :class:`AwsError`: the ``code`` is the AWS error shape name
(sent in the ``x-amzn-ErrorType`` header, which botocore's rest-json parser reads), ``status`` is the HTTP status
from the service model, and ``message`` reads like AWS's own wording.
"""

from __future__ import annotations


class AwsError(Exception):
    """Base class: an error that is serialized to the client as ``{"message": ...}`` plus headers."""

    code: str = "InternalServerException"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ValidationException(AwsError):
    code = "ValidationException"
    status = 400


class BadRequestException(AwsError):
    code = "BadRequestException"
    status = 400


class AccessDeniedException(AwsError):
    code = "AccessDeniedException"
    status = 403


class ResourceNotFoundException(AwsError):
    code = "ResourceNotFoundException"
    status = 404


class NotAcceptableException(AwsError):
    code = "NotAcceptableException"
    status = 406


class ConflictException(AwsError):
    code = "ConflictException"
    status = 409


class ThrottlingException(AwsError):
    code = "ThrottlingException"
    status = 429


class ServiceQuotaExceededException(AwsError):
    code = "ServiceQuotaExceededException"
    status = 402


class InternalServerException(AwsError):
    code = "InternalServerException"
    status = 500


# Protocol-level errors: these are not in the service model, but AWS front ends answer them with the same
# JSON shape, so botocore surfaces them as ordinary ClientErrors.


class SerializationException(AwsError):
    """The request body is not valid JSON (or a member has the wrong JSON type)."""

    code = "SerializationException"
    status = 400


class UnknownOperationException(AwsError):
    """No operation matches the method and path."""

    code = "UnknownOperationException"
    status = 404


class RequestEntityTooLargeException(AwsError):
    code = "RequestEntityTooLargeException"
    status = 413


class NotImplementedException(AwsError):
    """An operation the model defines but the emulator does not implement yet."""

    code = "NotImplementedException"
    status = 501


MODEL_ERRORS: dict[str, type[AwsError]] = {
    cls.code: cls
    for cls in (
        ValidationException,
        BadRequestException,
        AccessDeniedException,
        ResourceNotFoundException,
        NotAcceptableException,
        ConflictException,
        ThrottlingException,
        ServiceQuotaExceededException,
        InternalServerException,
    )
}
