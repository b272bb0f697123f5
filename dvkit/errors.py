"""Errors a user can cause. The CLI prints each as one line on stderr and exits non-zero.
Warnings (`DvkitWarning`) it prints as one `warning:` line and goes on."""


class DvkitError(Exception):
    """Base class of every error caused by user input or catalog state."""

    exit_code = 1


class InvalidNameError(DvkitError):
    """A name, reference or tag that breaks the naming rules."""


class NotFoundError(DvkitError):
    """An unknown adapter, version or base."""


class CatalogNotFoundError(DvkitError):
    """No catalog folder could be found or the folder holds no catalog."""


class CatalogNotWritableError(DvkitError):
    """The catalog folder or database cannot be written."""


class SchemaTooNewError(DvkitError):
    """The catalog was written by a newer dvkit whose schema this version does not know."""


class AdapterFileError(DvkitError):
    """A file that is not a valid dvkit adapter file (missing, corrupt or foreign)."""


class ConflictError(DvkitError):
    """An operation that would contradict what the catalog already holds."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C where a command asks for it (`interrupt_on_terminate`), so
    that the work stops the same way and the CLI can name the signal."""


class DvkitWarning(UserWarning):
    """Something the user should know about a result that still goes ahead (a prompt cut short,
    a motion composed without a guidance image).

    The CLI prints each as one line `warning: ...` on stderr; library users get a Python warning.
    """
