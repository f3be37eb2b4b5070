"""`strangler serve` put together: the control process, its workers and the optional pieces
(shadow store, Unleash link, gate controller, notifier), started and stopped in order."""
