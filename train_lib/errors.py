"""Exceptions that end a run with a contracted exit code (DESIGN.md)."""

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75


class UserError(Exception):
  """Bad input (config, flags, data, checkpoint): one line, exit code 2."""
  exit_code = EXIT_BAD_INPUT


class Diverged(Exception):
  """Non-finite loss or state: exit code 3."""
  exit_code = EXIT_DIVERGED


class Preempted(Exception):
  """Stopped by a signal after its checkpoint was saved: exit code 75."""
  exit_code = EXIT_PREEMPTED
