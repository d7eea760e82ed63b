"""In-house image and text classifiers behind one registry and one factory (no torchvision).

>>> from prokt_deploy.models import create_model
>>> model = create_model("resnet-w16-d1", num_classes=10, in_channels=1)

An architecture name is '<family>-<options>'; each family parses its own options and lists
the student candidates it offers to the planner. Adding a family is one module and one
``@register_family`` decorator.
"""

from prokt_deploy.models import cnn as _cnn  # noqa: F401  (registers the family)
from prokt_deploy.models import external as _external  # noqa: F401
from prokt_deploy.models import mobile as _mobile  # noqa: F401
from prokt_deploy.models import pool as _pool  # noqa: F401
from prokt_deploy.models import resnet as _resnet  # noqa: F401
from prokt_deploy.models import text as _text  # noqa: F401
from prokt_deploy.models import vgg as _vgg  # noqa: F401
from prokt_deploy.models import wide as _wide  # noqa: F401
from prokt_deploy.models.registry import (
    Family,
    classifier_head,
    count_macs,
    count_params,
    create_model,
    families,
    get_family,
    register_family,
    student_families,
    zero_init_head,
)

__all__ = [
    "Family",
    "classifier_head",
    "count_macs",
    "count_params",
    "create_model",
    "families",
    "get_family",
    "register_family",
    "student_families",
    "zero_init_head",
]
