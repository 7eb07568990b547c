"""The only code that writes result files and draws figures, one module per analysis family.

A report directory is built in a temporary directory beside its destination and renamed into
place when complete, so an interrupt leaves either the previous directory or nothing, never a
half-written ``result.json``. An existing directory is replaced only with ``force=True``.
"""

from .cards import card_html, write_feature_card
from .clustering import write_cluster_report
from .common import check_output_dir, package_versions, statistic_rows, verdict
from .hierarchy import write_hierarchy_report
from .similarity import write_similarity_report
from .steering import write_steering_report
from .topology import write_mapper_report

__all__ = ["check_output_dir", "package_versions", "statistic_rows", "verdict", "write_hierarchy_report",
           "write_similarity_report", "write_mapper_report", "write_cluster_report", "write_steering_report",
           "write_feature_card", "card_html"]
