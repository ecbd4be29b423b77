"""Exporters of trained generators to files other tools open (meshes for now)."""

from scorestudio.export.mesh import ExportConfig, extract_meshes, mesh_report, save_mesh

__all__ = ["ExportConfig", "extract_meshes", "mesh_report", "save_mesh"]
