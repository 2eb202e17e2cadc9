"""What makes an artifact safe to load, checked in this order before a byte of it is unpickled:

1. its manifest is signed by a trusted key (:mod:`artifact.signing`), so nobody changed it, nor the
   model file whose sha256 it records, since it was trained;
2. the folder it sits in is the name and version the manifest claims;
3. the model file matches the manifest's size and sha256;
4. it was built with a scikit-learn this runtime can unpickle.

:func:`trusted_manifest` is the one way to read a manifest that anything acts on (checked, cached
by hash); :func:`read_verified` also reads the model file once and checks those bytes; every file is
read without following a link and with a cap (:mod:`artifact.safeio`). :func:`unpickle` loads
exactly the bytes that were checked, with an unpickler that lets in only the exact (module, name)
pairs a Switchyard model is made of (plus the classes of modules the operator names), then refuses a
model holding a function as a value, so a pickle that reaches for ``os.system`` (directly, through a
dotted name, or planted as a vectorizer's preprocessor) is refused even if everything else was forged.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import platform
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from artifact.manifest import MANIFEST_FILE, ArtifactError, Manifest, Runtime, parse_manifest
from artifact.safeio import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, UnsafeFile, read_capped
from artifact.signing import SIGNATURE_FILE, Trust

# The exact (module, name) pairs a Switchyard model is made of: read off the pickles of every model
# kind (rules, tfidf-linear with svm or logreg, char n-grams, the reduced linear form, and the
# tabular kind with scikit-learn's common classifiers). A pair that is not here is refused; a dotted
# name (which pickle would walk attribute by attribute, ``numpy_pickle.os.system``) never matches.
# A team with its own model classes names their module with --trusted-modules (its classes only).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # numpy arrays, scalars and random states, as numpy 2 and numpy 1 name them
        *((m, n) for m in ("numpy._core.multiarray", "numpy.core.multiarray") for n in ("_reconstruct", "scalar")),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *(("numpy", t) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "bool_")),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        ("re", "_compile"),
        # Switchyard's own models (service.* is where older artifacts name them)
        ("artifact.linear", "CalibratedLinearText"),
        ("artifact.linear", "LeadSentences"),
        ("artifact.rules", "KeywordRuleModel"),
        ("service.linear", "CalibratedLinearText"),
        ("service.rules", "KeywordRuleModel"),
        # scikit-learn: the text pipeline
        ("sklearn.pipeline", "Pipeline"),
        ("sklearn.pipeline", "FeatureUnion"),
        ("sklearn.feature_extraction.text", "TfidfVectorizer"),
        ("sklearn.feature_extraction.text", "TfidfTransformer"),
        ("sklearn.calibration", "CalibratedClassifierCV"),
        ("sklearn.calibration", "_CalibratedClassifier"),
        ("sklearn.calibration", "_SigmoidCalibration"),
        ("sklearn.svm._classes", "LinearSVC"),
        ("sklearn.svm._classes", "SVC"),
        ("sklearn.linear_model._logistic", "LogisticRegression"),
        ("sklearn.preprocessing._data", "StandardScaler"),
        ("sklearn.preprocessing._label", "LabelBinarizer"),
        ("sklearn.preprocessing._label", "LabelEncoder"),
        ("sklearn.dummy", "DummyClassifier"),
        # scikit-learn: the tabular kind's common classifiers and their parts
        ("sklearn.ensemble._forest", "RandomForestClassifier"),
        ("sklearn.ensemble._forest", "ExtraTreesClassifier"),
        ("sklearn.ensemble._gb", "GradientBoostingClassifier"),
        ("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", "HistGradientBoostingClassifier"),
        ("sklearn.ensemble._hist_gradient_boosting.binning", "_BinMapper"),
        ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
        ("sklearn.tree._classes", "DecisionTreeClassifier"),
        ("sklearn.tree._classes", "DecisionTreeRegressor"),
        ("sklearn.tree._classes", "ExtraTreeClassifier"),
        ("sklearn.tree._classes", "ExtraTreeRegressor"),
        ("sklearn.tree._tree", "Tree"),
        ("sklearn.neighbors._classification", "KNeighborsClassifier"),
        ("sklearn.neighbors._kd_tree", "KDTree"),
        ("sklearn.neighbors._kd_tree", "newObj"),
        ("sklearn.neighbors._ball_tree", "BallTree"),
        ("sklearn.neighbors._ball_tree", "newObj"),
        ("sklearn.metrics._dist_metrics", "EuclideanDistance64"),
        ("sklearn.metrics._dist_metrics", "newObj"),
        ("sklearn.naive_bayes", "GaussianNB"),
        ("sklearn.neural_network._multilayer_perceptron", "MLPClassifier"),
        ("sklearn.neural_network._stochastic_optimizers", "AdamOptimizer"),
        ("sklearn.neural_network._stochastic_optimizers", "SGDOptimizer"),
        ("sklearn._loss.link", "Interval"),
        ("sklearn._loss.link", "MultinomialLogit"),
        ("sklearn._loss.link", "LogitLink"),
        ("sklearn._loss.loss", "HalfMultinomialLoss"),
        ("sklearn._loss.loss", "HalfBinomialLoss"),
        ("_loss", "CyHalfMultinomialLoss"),
        ("_loss", "__pyx_unpickle_CyHalfMultinomialLoss"),
        ("_loss", "CyHalfBinomialLoss"),
        ("_loss", "__pyx_unpickle_CyHalfBinomialLoss"),
        # plain containers
        *(("builtins", t) for t in ("set", "frozenset", "slice", "complex", "bytearray")),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("_codecs", "encode"),
    }
)

# Types an estimator may hold as a parameter value (``TfidfVectorizer(dtype=np.float32)``); any
# other function, method or class found as a value in a loaded model is refused: that is how a
# pickle would smuggle code in through an allowed class (a vectorizer's ``preprocessor``, a
# ``FunctionTransformer``'s ``func``) to run it on every request.
ALLOWED_TYPE_VALUES: frozenset[str] = frozenset(
    f"numpy.{t}" for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "bool")
)


def runtime_versions() -> Runtime:
    import joblib
    import numpy
    import sklearn

    return Runtime(
        python=platform.python_version(),
        sklearn=sklearn.__version__,
        numpy=numpy.__version__,
        joblib=joblib.__version__,
    )


def _check_digest(path: Path, manifest: Manifest, size: int, actual: str) -> None:
    if size != manifest.artifact.size:
        raise ArtifactError(f"{path} has {size} bytes, the manifest says {manifest.artifact.size}: refusing to load it")
    if actual != manifest.artifact.sha256:
        raise ArtifactError(
            f"{path} sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.artifact.sha256[:12]}…: refusing to load it"
        )


def _read(path: Path, cap: int, what: str) -> bytes:
    """A file of the artifact, read as :func:`artifact.safeio.read_capped` does, or an ArtifactError."""
    try:
        return read_capped(path, cap)
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing ({what})") from None
    except UnsafeFile as exc:
        raise ArtifactError(f"{exc} ({what})") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path} ({what}): {exc.strerror or exc}") from None


def model_path(version_dir: Path, manifest: Manifest) -> Path:
    name = manifest.artifact.file
    if "/" in name or name in ("", ".", ".."):  # signed, but a file name must not leave the folder
        raise ArtifactError(f"{version_dir}: the manifest names the model file {name!r}, which is not a plain name")
    return version_dir / name


# Verified manifests by (folder, the manifest's and the signature's sha256, the trusted key ids):
# the controller and the console read a manifest on every command and page, and each read is checked.
_VERIFIED: dict[tuple[str, str, str, tuple[str, ...], bool], Manifest] = {}
_VERIFIED_MAX = 256


def trusted_manifest(version_dir: Path, trust: Trust) -> Manifest:
    """The manifest of ``version_dir``, read once (no link followed, size capped), whose signature is
    checked against ``trust`` and whose name and version are the folder's: the only way anything in
    Switchyard reads a manifest it then acts on (a gate, a deploy, a page)."""
    if not version_dir.is_dir():
        raise ArtifactError(f"no artifact at {version_dir}: directory does not exist")
    data = _read(version_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES, "the manifest")
    try:
        signature: bytes | None = read_capped(version_dir / SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
    except FileNotFoundError:
        signature = None
    except OSError as exc:
        raise ArtifactError(f"{exc} (the signature)") from None
    key = (
        str(version_dir),
        hashlib.sha256(data).hexdigest(),
        hashlib.sha256(signature or b"").hexdigest(),
        tuple(sorted(trust.keys)),
        trust.allow_unsigned,
    )
    cached = _VERIFIED.get(key)
    if cached is not None:
        return cached
    trust.check(version_dir, data, signature)
    manifest = parse_manifest(data, version_dir / MANIFEST_FILE)
    claimed = f"{manifest.name}/{manifest.version}"
    found = f"{version_dir.parent.name}/{version_dir.name}"
    if claimed != found:
        raise ArtifactError(f"{version_dir}: the folder says {found}, the manifest says {claimed}: refusing it")
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[key] = manifest
    return manifest


@dataclass(frozen=True)
class Verified:
    """A manifest and the model file's bytes, checked against it: what :func:`unpickle` loads."""

    manifest: Manifest
    path: Path
    payload: bytes


def read_verified(version_dir: Path, trust: Trust) -> Verified:
    """Check the signature and the folder, then read the model file once (capped at the size the
    signed manifest gives) and check its sha256: the bytes returned are the ones that were checked."""
    manifest = trusted_manifest(version_dir, trust)
    path = model_path(version_dir, manifest)
    payload = _read(path, manifest.artifact.size, "the model file")
    _check_digest(path, manifest, len(payload), hashlib.sha256(payload).hexdigest())
    return Verified(manifest, path, payload)


def verify(version_dir: Path, trust: Trust) -> Manifest:
    """Check the signature, the folder and the model file's size and sha256 (without unpickling it)."""
    return read_verified(version_dir, trust).manifest


def check_runtime(manifest: Manifest, *, allow_mismatch: bool = False) -> list[str]:
    """Refuse a scikit-learn major/minor mismatch (pickles are not portable across them).

    Returns warnings for differences that are tolerated (patch versions, other libraries).
    """
    running = runtime_versions()
    warnings: list[str] = []
    for lib in ("sklearn", "numpy", "joblib"):
        want, have = getattr(manifest.runtime, lib), getattr(running, lib)
        if want == have:
            continue
        same_minor = want.split(".")[:2] == have.split(".")[:2]
        if lib == "sklearn" and not same_minor and not allow_mismatch:
            raise ArtifactError(
                f"artifact was built with scikit-learn {want}, this runtime has {have}: "
                "refusing to unpickle across minor versions (set allow_version_mismatch to override)"
            )
        warnings.append(f"{lib} {want} in the manifest, {have} running")
    return warnings


def resolve_global(module: str, name: str, modules: tuple[str, ...] = ()) -> Any:
    """The class or function a pickle asks for, if it is on the allowlist; None if it is not.

    ``modules`` names the operator's own modules: any class *defined* in one of them is allowed (not
    what it imports, not its functions). A dotted name is never allowed.
    """
    if "." in name or not name.isidentifier():
        return None
    if (module, name) in ALLOWED_GLOBALS:
        return getattr(importlib.import_module(module), name)
    if module in modules:
        found = getattr(importlib.import_module(module), name, None)
        if isinstance(found, type) and found.__module__ == module:
            return found
    return None


def _type_name(value: type) -> str:
    return f"{value.__module__}.{value.__qualname__}"


def check_values(model: Any, where: Path) -> None:
    """Refuse a loaded model that holds a function, a method or a class as a value (a vectorizer's
    ``preprocessor``, a transformer's ``func``): code that would run on every request.

    Walks the model's attributes, containers and object arrays (each object once)."""
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(model, type(model).__name__)]
    while stack:
        value, path = stack.pop()
        if id(value) in seen or isinstance(value, str | bytes | int | float | bool | type(None)):
            continue
        seen.add(id(value))
        if isinstance(value, type):
            if _type_name(value) not in ALLOWED_TYPE_VALUES:
                raise ArtifactError(f"{where}: {path} is the class {_type_name(value)}: refusing to serve it")
            continue
        if isinstance(value, CALLABLE_VALUES):
            what = getattr(value, "__qualname__", None) or type(value).__name__
            raise ArtifactError(
                f"{where}: {path} is the function {getattr(value, '__module__', '?')}.{what}, "
                "which a model would call on requests: refusing to serve it"
            )
        if isinstance(value, dict):
            stack.extend((v, f"{path}[{k!r}]") for k, v in value.items())
            stack.extend((k, f"{path} key") for k in value)
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, numpy.ndarray):
            if value.dtype.hasobject:
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value.ravel()))
        elif hasattr(value, "__dict__"):
            stack.extend((v, f"{path}.{k}") for k, v in vars(value).items())


CALLABLE_VALUES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.ModuleType,
    functools.partial,
)


def unpickle(verified: Verified, *, allow_version_mismatch: bool = False, modules: tuple[str, ...] = ()) -> Any:
    """Load the checked bytes (never the file again), letting in only the allowlist's exact classes
    and functions (``modules`` adds the classes defined in the operator's own modules), then refuse
    a model that holds code as a value (:func:`check_values`)."""
    from joblib.numpy_pickle import NumpyUnpickler, _validate_fileobject_and_memmap

    class AllowList(NumpyUnpickler):  # type: ignore[misc]
        # joblib routes the nested pickles of object arrays through this same method.
        def find_class(self, module: str, name: str) -> Any:
            found = resolve_global(module, name, modules)
            if found is None:
                raise ArtifactError(
                    f"{verified.path} wants {module}.{name}, which is not among the classes a Switchyard "
                    "model is made of: refusing to unpickle it"
                )
            return found

    check_runtime(verified.manifest, allow_mismatch=allow_version_mismatch)
    try:
        with _validate_fileobject_and_memmap(io.BytesIO(verified.payload), "", None) as (stream, _):
            model = AllowList("", stream, ensure_native_byte_order=True).load()
    except ArtifactError:
        raise
    except Exception as exc:  # a verified pickle can still fail to import a class
        raise ArtifactError(f"cannot unpickle {verified.path}: {exc}") from exc
    check_values(model, verified.path)
    return model


def load_model(version_dir: Path, trust: Trust, *, modules: tuple[str, ...] = ()) -> tuple[Any, Manifest]:
    """Verify, then unpickle. Never unpickles a file whose signature, folder or hash is wrong."""
    verified = read_verified(version_dir, trust)
    return unpickle(verified, modules=modules), verified.manifest
