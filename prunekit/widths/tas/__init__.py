"""TAS (Dong & Yang, NeurIPS 2019): searching layer widths by a differentiable search, then training the winner with
logit KD from the unpruned network (methods.md section 7).

- `space`: the searched groups (from the engine's analysis) and their candidate widths;
- `supernet`: `TASSupernet`, the masked-channel supernet with per-candidate BatchNorm and Gumbel sampling;
- `cost`: expected MACs (differentiable) and the paper's step loss around the target;
- `search`: the bi-level search (weights / logits on the two halves of the training data), resumable;
- `derive`: argmax widths -> `WidthConfig` -> a freshly initialised narrower model and its plan.

Depth search (skipping residual blocks) is not implemented: the search covers widths only.
"""
from .cost import ExpectedMacs, step_cost_loss, tau_at
from .derive import build_searched, tas_width_config
from .search import SearchResult, TASSearchConfig, search, split_halves
from .space import PAPER_FRACTIONS, SearchableGroup, searchable_groups, width_choices
from .supernet import CandidateBatchNorm, TASSupernet, gumbel_select2

__all__ = ["ExpectedMacs", "step_cost_loss", "tau_at", "build_searched", "tas_width_config", "SearchResult",
           "TASSearchConfig", "search", "split_halves", "PAPER_FRACTIONS", "SearchableGroup", "searchable_groups",
           "width_choices", "CandidateBatchNorm", "TASSupernet", "gumbel_select2"]
