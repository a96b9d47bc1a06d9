"""Exceptions that end a run with a contracted exit code (DESIGN.md)."""

EXIT_CHECKS_FAILED = 1
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


class ChecksFailed(Exception):
  """A tool's checks ran and at least one failed (--mode=sanity): exit code 1."""
  exit_code = EXIT_CHECKS_FAILED
