"""Collapse guards that fire or sit at chance on cue, whatever the losses: for the rollback tests
and the torchrun worker (tests/distributed_worker.py)."""

from pitscope.training_rollback import CollapseGuard


class FiresAfterEpoch2(CollapseGuard):
    """Keeps epoch 1 and fires after epoch 2."""

    def observe(self, epoch, ce):
        if epoch == 1:
            self.best_ce, self.best_epoch = ce, 1
            return "best"
        if epoch == 2 and self.rollbacks < self.max_rollbacks:
            self.rollbacks += 1
            return "rollback"
        return ""


class AtChanceAfterEpoch2(CollapseGuard):
    """Keeps epoch 1 and sees epoch 2 at chance once (too few to fire)."""

    def observe(self, epoch, ce):
        if epoch == 1:
            self.best_ce, self.best_epoch = ce, 1
            return "best"
        self.at_chance = 1
        return ""
