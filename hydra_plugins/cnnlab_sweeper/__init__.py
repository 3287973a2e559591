"""cnnlab's resumable sweeper, where Hydra accepts plugins: it instantiates only classes defined in `hydra_plugins`.

The code lives in cnnlab/runs/sweep_resume.py; conf/hydra/sweeper/resumable.yaml names this class.
"""

from cnnlab.runs import sweep_resume


class ResumableSweeper(sweep_resume.ResumableSweeper):
    """Hydra's basic sweeper continuing the sweep in hydra.sweep.dir (cnnlab.runs.sweep_resume)."""
