"""Package-level promises: a light import, explicit exports, no writes at import."""

import subprocess
import sys

HEAVY = ["torch", "transformer_lens", "sae_lens", "kmapper", "gudhi", "umap", "matplotlib", "transformers"]


def _imported_after(statement):
    code = f"import sys; {statement}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_geomsteer_is_light():
    assert _imported_after("import geomsteer") == ""


def test_analyzers_and_wordnet_import_without_heavy_libraries():
    assert _imported_after("import geomsteer.analyzers.hierarchy, geomsteer.wordnet, geomsteer.reports, geomsteer.cli") == ""


def test_explicit_all():
    import geomsteer

    assert "GeomsteerError" in geomsteer.__all__ and "ConceptHierarchy" in geomsteer.__all__
    for name in geomsteer.__all__:
        assert hasattr(geomsteer, name)


def test_errors_mix_in_the_standard_exceptions():
    from geomsteer import errors

    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.ConfigError, errors.GeomsteerError)
    assert issubclass(errors.ModelNotFoundError, LookupError)
    assert issubclass(errors.DataError, ValueError)
