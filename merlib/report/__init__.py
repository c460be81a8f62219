"""What the notebooks show and write: tables (:mod:`~merlib.report.tables`), figures
(:mod:`~merlib.report.figures`) and the provenance beside each (:mod:`~merlib.report.provenance`).

The notebooks call ``report.<function>``; the names below are that interface, each defined in the
module of its concern.
"""
from merlib.registry import VARIANTS
from merlib.report.figures import (FigureView, confusion_grid, face_sheet, figure2, figure5, figure6,
                                   figure6_paper,
                                   loss_curves, show, tim_strip)
from merlib.report.provenance import (Provenance, may_keep_faces, provenance_table, relative_paths,
                                      write_figure, write_table)
from merlib.report.tables import (across_datasets, apex_error_table, calibration_table, class_division,
                                  device_check_summary, division_report, excluded_and_bad, face_routes, flags_summary,
                                  for_display,
                                  megc_division, oracle_table, paper_reference, per_source_table,
                                  preprocess_summary, profile_label, status_summary, synth_knobs, table5,
                                  table6,
                                  usable)

__all__ = ["FigureView", "across_datasets", "Provenance", "VARIANTS", "apex_error_table", "calibration_table",
           "class_division", "device_check_summary", "confusion_grid", "division_report", "excluded_and_bad",
           "face_routes", "face_sheet", "figure2", "figure5", "figure6", "figure6_paper", "flags_summary",
           "for_display", "loss_curves", "may_keep_faces", "megc_division", "oracle_table",
           "paper_reference", "per_source_table", "preprocess_summary", "profile_label",
           "provenance_table", "relative_paths", "show", "status_summary", "synth_knobs", "table5", "table6",
           "tim_strip", "usable", "write_figure", "write_table"]
