"""ST-D: source drop over target drop, for MAP-style domain protection (an evaluate metric)."""

import datasets
import evaluate

_DESCRIPTION = """
Computes accuracy before and after protection on a source and a target domain, the drops in points,
and ST-D = source_drop / target_drop (lower is better; None when the target did not drop).
Pass predictions/references of the protected model, plus the same for the original model as
`original_predictions`, and `is_source` flags saying which samples come from the source domain.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels of the protected model.
    references: true labels.
    original_predictions: predicted labels of the unprotected model on the same samples.
    is_source: 1 for source-domain samples, 0 for target-domain samples.
Returns:
    source_before, source_after, target_before, target_after (fractions), source_drop, target_drop (points), st_d.
"""


def _acc(preds, refs):
    return sum(int(p == r) for p, r in zip(preds, refs, strict=True)) / len(refs)


class STD(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "original_predictions": datasets.Value("int64"),
                    "is_source": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, original_predictions, is_source):
        groups = {}
        for flag in (1, 0):
            idx = [i for i, s in enumerate(is_source) if s == flag]
            if not idx:
                raise ValueError(f"no {'source' if flag else 'target'} samples: is_source must hold both 1 and 0")
            refs = [references[i] for i in idx]
            groups[flag] = (
                _acc([original_predictions[i] for i in idx], refs),
                _acc([predictions[i] for i in idx], refs),
            )
        (sb, sa), (tb, ta) = groups[1], groups[0]
        sd, td = 100.0 * (sb - sa), 100.0 * (tb - ta)
        return {
            "source_before": sb,
            "source_after": sa,
            "target_before": tb,
            "target_after": ta,
            "source_drop": sd,
            "target_drop": td,
            "st_d": sd / td if td > 0 else None,
        }
