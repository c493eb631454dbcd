"""The paper's three analyses of a finished run (section 4.4, appendix E, table 22).

* :mod:`.experts`: test accuracy with Single-i / Increment-i / Sliced-i experts kept (table 22);
* :mod:`.attention`: last-block [CLS] attention maps per expert (figures 4 and 7);
* :mod:`.tsne`: t-SNE of the [CLS] embeddings with silhouette and k-NN scores (figure 5);
* :mod:`.load`: rebuild the adapted model from a run folder's ``adapter.safetensors``.

Library code: torch, timm, scikit-learn and matplotlib only; the CLI
(``alorectl analyze``) finds the run and logs the outputs.
"""

from .attention import AttentionGrid, cls_attention, draw_grid, expert_attention
from .experts import ExpertRow, ExpertTable, expert_table, num_experts
from .load import AdapterInfo, load_eval_split, load_model, read_adapter_info, subset
from .tsne import Embedding, draw_panels, head_inputs, knn_accuracy, project, score

__all__ = ["AdapterInfo", "AttentionGrid", "Embedding", "ExpertRow", "ExpertTable", "cls_attention", "draw_grid",
           "draw_panels", "expert_attention", "expert_table", "head_inputs", "knn_accuracy", "load_eval_split",
           "load_model", "num_experts", "project", "read_adapter_info", "score", "subset"]
