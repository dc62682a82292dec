"""The one exception type the library raises for bad input, models or environments."""


class PadimError(ValueError):
    """A user-facing problem, stated in one line that names the file or object at fault."""


class ImageTooLarge(PadimError):
    """An image whose header declares more pixels than the decoder is allowed to allocate."""
