"""The one exception type that user-facing failures raise.

The CLI turns an :class:`NSTError` into one readable line and a non-zero exit
code; anything else is a bug and keeps its traceback.
"""


class NSTError(Exception):
  """A problem with the user's input (files, numbers, layer names, weights)."""


class Interrupted(KeyboardInterrupt):
  """A stop request: Ctrl-C (SIGINT), SIGTERM or SIGHUP, turned into an exception.

  A subclass of :class:`KeyboardInterrupt`, so everything that handles Ctrl-C
  (the optimisation loop keeps its current image) handles the others alike.

  Attributes:
    signum: the signal's number (``signal.SIGTERM``, ...).
    name: its name (``"SIGTERM"``).
  """

  def __init__(self, signum: int, name: str):
    super().__init__(name)
    self.signum, self.name = signum, name


class NonFiniteLoss(NSTError):
  """The loss became NaN or inf during optimisation.

  Attributes:
    iteration: the optimiser step at which the non-finite value appeared.
    image: the last image whose loss was finite, shape (H, W, 3) in [0, 1]
      (unclipped), or ``None`` if even the first evaluation failed.
  """

  def __init__(self, message, *, iteration, image):
    super().__init__(message)
    self.iteration = iteration
    self.image = image
