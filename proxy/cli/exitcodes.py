"""Exit codes of the command line (contract §2)."""

OK = 0
FAILED = 1  # gate: fail (rolled back where auto_rollback is on)
USAGE = 2  # usage or config error
UNREACHABLE = 3  # admin API unreachable or refused
HOLD = 4  # gate: not enough evidence yet
INCONCLUSIVE = 5  # gate: the step held for promotion.max_hold and never settled
AWAITING_APPROVAL = 6  # the change waits for `strangler approve` by a second person
