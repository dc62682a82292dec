"""Every exception and warning the library raises, in one small hierarchy under PadimError.

Each is stated in one line that names the file or object at fault; the CLI prints that line and exits
with status 2. Catch ``PadimError`` for all of them, or one of its four kinds:

- ``NotFittedError``: a model used before ``fit`` (or ``load``).
- ``ModelFileError``: a model file or bundle that is missing, corrupt, of another format version, or
  does not match what it is loaded with.
- ``InputError``: bad input: an image, folder, mask or parameter value (``ImageTooLarge`` is one).
- ``PadimEnvironmentError``: the machine lacks what was asked for: a package, backbone weights, a
  device, memory.

``PadimWarning`` is the one warning category: a result that is usable but weaker than asked for.
"""


class PadimError(ValueError):
    """A user-facing problem, stated in one line that names the file or object at fault."""


class NotFittedError(PadimError, AttributeError):
    """A model asked for fitted state before ``fit`` or ``load`` gave it any."""


class ModelFileError(PadimError):
    """A model file or bundle that cannot be read, checked, or matched to what loads it."""


class InputError(PadimError):
    """An image, folder, mask or parameter value that the library cannot use as given."""


class ImageTooLarge(InputError):
    """An image whose header declares more pixels than the decoder is allowed to allocate."""


class PadimEnvironmentError(PadimError):
    """The machine lacks something the call needs: a package, backbone weights, a device, memory."""


class PadimWarning(UserWarning):
    """A result that is usable but weaker than what was asked for (e.g. a calibration from few images)."""


__all__ = ["ImageTooLarge", "InputError", "ModelFileError", "NotFittedError", "PadimEnvironmentError",
           "PadimError", "PadimWarning"]
