"""torchtitan's TensorBoard logger (`components.metrics.TensorBoardLogger`). Checked on
torchtitan 0.2.2 (`TORCHTITAN_CHECKED`): `log(dict of scalars, step)`, `close()`, and the
underlying SummaryWriter as `.writer` (flushed after each record, so a live TensorBoard sees
every step)."""

from torchtitan.components.metrics import TensorBoardLogger

__all__ = ["TensorBoardLogger"]
