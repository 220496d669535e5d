"""Every AWS call the service makes, found by reading its code (``ast``), mapped to the IAM actions it needs.

What counts as a call: a reference ``<client>.<operation>`` (called, or handed on as a bound method, e.g. to
``asyncio.to_thread`` or ``functools.partial``), ``<client>.get_paginator("op")`` / ``get_waiter("name")``,
boto3's transfer-manager methods (``upload_fileobj`` ...), and ``SignedHttp.request`` calls (SigV4-signed HTTP
for the APIs without an SDK operation: DICOMweb on HealthImaging, FHIR REST on HealthLake), whose URL is resolved
to a pattern and matched against `SIGNED_HTTP_ROUTES`.

How a client's service is known, never guessed:

- where it is made: ``make_client("svc", ...)``, ``<session or boto3>.client("svc")``, ``SignedHttp(creds,
  region, "svc")`` (a non-literal service raises);
- where it is held: a local or ``self.<attr>`` bound to one of those, or to a parameter; a parameter says its
  service by its name (`CLIENT_NAMES`; SignedHttp parameters, recognised by their annotation, by
  `SIGNED_HTTP_NAMES`); ``<...clients>.<field>`` is a field of ``AwsClients``, whose services are read from
  ``AwsClients.from_settings``;
- where it is handed over: every client passed to a class or function of the service must land in a parameter
  (or dataclass field) whose name says the same service, else `ScanError`. That keeps the naming convention
  honest at the one place it is relied upon;
- a reference ``x.<name>`` where ``name`` is an operation of a service the code makes clients of, and ``x`` cannot
  be resolved, raises `ScanError` rather than being skipped.

The operations of each service come from botocore's own service models; S3's operations are mapped to IAM
actions by `S3_ACTIONS` (they are not named alike), the other services' by ``<signing name>:<OperationName>``;
every resulting action must exist in parliament's IAM database.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

SERVICE_PACKAGES = ("contracts", "workflows", "activities", "worker", "cli")

# A parameter or attribute (leading underscores dropped) of one of these names holds a boto3 client of that service.
CLIENT_NAMES = {
    "s3": "s3",
    "sqs": "sqs",
    "events": "events",
    "medical_imaging": "medical-imaging",
    "mi": "medical-imaging",
    "healthlake": "healthlake",
    "hl": "healthlake",
    "kms": "kms",
}
# A parameter annotated ``SignedHttp`` (or ``SignedHttp | None``) signs for this service.
SIGNED_HTTP_NAMES = {"dicomweb": "medical-imaging", "fhir_http": "healthlake"}

# Client methods that are not operations. Paginators / waiters name their operation; the transfer manager's
# methods run operations of their own (s3transfer: HeadObject, GetObject, PutObject or the multipart upload
# calls — CreateMultipartUpload / UploadPart / CompleteMultipartUpload, all authorised by s3:PutObject — and
# AbortMultipartUpload when an upload fails, which is an action of its own).
TRANSFER_ACTIONS = {
    "upload_fileobj": ("s3:PutObject", "s3:AbortMultipartUpload"),
    "upload_file": ("s3:PutObject", "s3:AbortMultipartUpload"),
    "download_fileobj": ("s3:GetObject",),
    "download_file": ("s3:GetObject",),
    "copy": ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"),
}
HARMLESS_CLIENT_ATTRS = {"meta", "exceptions", "close", "can_paginate", "generate_presigned_url",
                         "generate_presigned_post", "waiter_names"}

# S3 operation (snake case) -> IAM actions (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations.html,
# "Permissions" of each operation). An S3 operation found in the code but missing here raises ScanError.
S3_ACTIONS: dict[str, tuple[str, ...]] = {
    "get_object": ("s3:GetObject",),
    "head_object": ("s3:GetObject",),  # HeadObject is authorised by s3:GetObject
    "put_object": ("s3:PutObject",),
    "copy_object": ("s3:GetObject", "s3:PutObject"),  # GetObject on the source, PutObject on the target
    "delete_object": ("s3:DeleteObject",),
    "delete_objects": ("s3:DeleteObject",),  # DeleteObjects checks s3:DeleteObject per key
    "list_objects_v2": ("s3:ListBucket",),
    "list_objects": ("s3:ListBucket",),
    "head_bucket": ("s3:ListBucket",),
    "get_bucket_location": ("s3:GetBucketLocation",),
    "create_multipart_upload": ("s3:PutObject",),
    "upload_part": ("s3:PutObject",),
    "upload_part_copy": ("s3:GetObject", "s3:PutObject"),
    "complete_multipart_upload": ("s3:PutObject",),
    "abort_multipart_upload": ("s3:AbortMultipartUpload",),
    "list_multipart_uploads": ("s3:ListBucketMultipartUploads",),
    "list_parts": ("s3:ListMultipartUploadParts",),
    "get_object_tagging": ("s3:GetObjectTagging",),
    "put_object_tagging": ("s3:PutObjectTagging",),
    "put_bucket_notification_configuration": ("s3:PutBucketNotification",),
    "get_bucket_notification_configuration": ("s3:GetBucketNotification",),
}

# Actions an operation needs besides its own: the import jobs pass a data-access role to the service.
EXTRA_ACTIONS: dict[str, tuple[str, ...]] = {
    "medical-imaging:StartDICOMImportJob": ("iam:PassRole",),
    "healthlake:StartFHIRImportJob": ("iam:PassRole",),
}


@dataclass(frozen=True)
class Route:
    service: str
    method: str
    pattern: str  # regex over the URL pattern, where every formatted value is "{}"
    action: str
    note: str


# SigV4-signed HTTP without an SDK operation. HealthImaging's DICOMweb actions are named in the Service
# Authorization Reference (GetDICOMInstance / GetDICOMInstanceMetadata / GetDICOMInstanceFrames, ...).
# HealthLake's ``$validate`` has no action of its own in parliament's database (nor in the reference's list at the
# time of writing): it reads nothing and writes nothing, and is mapped to healthlake:ReadResource, the read-level
# FHIR REST action. This is the one mapping not taken from AWS's tables; confirm it on a real data store.
SIGNED_HTTP_ROUTES = (
    Route("medical-imaging", "GET", r"/studies/\{\}/series/\{\}/instances/\{\}/metadata$",
          "medical-imaging:GetDICOMInstanceMetadata", "WADO-RS instance metadata"),
    Route("medical-imaging", "GET", r"/studies/\{\}/series/\{\}/instances/\{\}/frames/\{\}$",
          "medical-imaging:GetDICOMInstanceFrames", "WADO-RS frames"),
    Route("medical-imaging", "GET", r"/studies/\{\}/series/\{\}/instances/\{\}$",
          "medical-imaging:GetDICOMInstance", "WADO-RS instance"),
    Route("healthlake", "POST", r"/\{\}/\$validate$", "healthlake:ReadResource", "FHIR $validate (assumed action)"),
)

# Provisioning helpers: they create queues, rules and bucket notifications, which the deployment (infrastructure
# as code) does in production. Only the tests and the local stack call them; the scan skips their bodies and
# checks that nothing in the service refers to them.
PROVISIONING_HELPERS = {
    "worker/listener.py": {"configure_bucket_notifications"},
    "worker/jobevents.py": {"configure_job_events_rule"},
}


class ScanError(Exception):
    """The scanner met a call it cannot attribute to a service, or an operation it cannot map to IAM."""


@dataclass(frozen=True)
class Use:
    path: str
    line: int
    call: str  # e.g. "s3.get_object", "medical-imaging GET .../metadata"

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.call})"


@dataclass
class Scan:
    actions: dict[str, list[Use]] = field(default_factory=dict)
    skipped: list[Use] = field(default_factory=list)  # calls inside PROVISIONING_HELPERS, not granted

    def add(self, action: str, use: Use) -> None:
        self.actions.setdefault(action, []).append(use)


# ---- botocore and parliament ------------------------------------------------------------------------------------

@cache
def _session() -> Any:
    import botocore.session

    return botocore.session.get_session()


@cache
def operations(service: str) -> dict[str, str]:
    """snake_case method name -> OperationName, from botocore's service model."""
    from botocore import xform_name

    model = _session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


@cache
def iam_prefix(service: str) -> str:
    return str(_session().get_service_model(service).signing_name)


@cache
def paginators(service: str) -> frozenset[str]:
    from botocore import xform_name

    try:
        model = _session().get_paginator_model(service)
    except Exception:  # no paginators for this service
        return frozenset()
    return frozenset(xform_name(name) for name in model._paginator_config)


@cache
def waiters(service: str) -> dict[str, str]:
    """snake_case waiter name -> the OperationName it polls."""
    from botocore import xform_name

    try:
        model = _session().get_waiter_model(service)
    except Exception:
        return {}
    return {xform_name(name): model.get_waiter(name).operation for name in model.waiter_names}


@cache
def iam_database() -> dict[str, dict[str, Any]]:
    """parliament's IAM database: ``prefix:Privilege`` (lower-cased) -> the privilege's entry."""
    import parliament  # needs setuptools<81 (pkg_resources)

    path = Path(parliament.__file__).parent / "iam_definition.json"
    out: dict[str, dict[str, Any]] = {}
    for service in json.loads(path.read_text()):
        for privilege in service["privileges"]:
            out.setdefault(f"{service['prefix']}:{privilege['privilege']}".lower(), privilege)
    return out


def supports_resource_level(action: str) -> bool:
    """True when the action can be scoped to resources: it has a resource type (required ``type*`` or optional
    ``type``); the entry with an empty resource type only carries the condition keys."""
    entry = iam_database().get(action.lower())
    if entry is None:
        raise ScanError(f"{action} is not an IAM action in parliament's database")
    return any(rt["resource_type"] for rt in entry["resource_types"])


def actions_of(service: str, method: str) -> tuple[str, ...]:
    ops = operations(service)
    if method not in ops:
        raise ScanError(f"{method} is not an operation of {service}")
    if service == "s3":
        if method not in S3_ACTIONS:
            raise ScanError(f"S3 operation {method} has no entry in S3_ACTIONS (its IAM action is not named alike)")
        return S3_ACTIONS[method]
    action = f"{iam_prefix(service)}:{ops[method]}"
    return (action, *EXTRA_ACTIONS.get(action, ()))


# ---- the scan ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Client:
    service: str
    signed_http: bool = False


class _Not:
    """Definitely not a client (bound to something else)."""


class _Unknown:
    """Cannot tell."""


NOT, UNKNOWN = _Not(), _Unknown()
Res = Client | _Not | _Unknown
FuncNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class _Ctx:
    path: str
    cls: ast.ClassDef | None
    funcs: tuple[FuncNode, ...]


def _own_nodes(func: FuncNode) -> Iterator[ast.AST]:
    """The nodes of ``func``'s body, not descending into nested functions, lambdas or classes."""
    todo: list[ast.AST] = list(func.body)
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                todo.append(child)


# The client factory: its ``.client(service)`` passes its parameter on; its callers name the service.
FACTORIES = {"make_client"}


def _walk_skipping(node: ast.AST, skip: set[str]) -> Iterator[ast.AST]:
    """``ast.walk`` that does not enter the functions named in ``skip``."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        todo += [c for c in ast.iter_child_nodes(current)
                 if not (isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef) and c.name in skip)]


def _params(func: FuncNode) -> list[ast.arg]:
    a = func.args
    return [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs,
            *([a.kwarg] if a.kwarg else [])]


def _bare(name: str) -> str:
    return name.lstrip("_")


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _tail_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


class Scanner:
    def __init__(self, root: Path, packages: Iterable[str] = SERVICE_PACKAGES,
                 helpers: dict[str, set[str]] | None = None) -> None:
        self.root = root
        self.helpers = PROVISIONING_HELPERS if helpers is None else helpers
        self._resolving: set[tuple[Any, ...]] = set()
        self.modules: dict[str, ast.Module] = {}
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                rel = path.relative_to(root).as_posix()
                self.modules[rel] = ast.parse(path.read_text(), filename=rel)
        self.classes: dict[str, list[ast.ClassDef]] = {}
        self.functions: dict[str, list[FuncNode]] = {}
        for module in self.modules.values():
            for node in module.body:
                if isinstance(node, ast.ClassDef):
                    self.classes.setdefault(node.name, []).append(node)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append(node)
        self.fields = self._aws_clients_fields()
        self.services = self._created_services()
        self.op_names: dict[str, set[str]] = {}
        # Operations of every service the code makes clients of or names: a reference to one of them on
        # something unresolvable raises.
        for service in self.services | set(CLIENT_NAMES.values()) | set(self.fields.values()):
            for method in operations(service):
                self.op_names.setdefault(method, set()).add(service)

    # -- what the code creates

    def _aws_clients_fields(self) -> dict[str, str]:
        """AwsClients field -> service, read from the keywords of the ``cls(...)`` call in ``from_settings``."""
        out: dict[str, str] = {}
        for cls in self.classes.get("AwsClients", []):
            for node in ast.walk(cls):
                if isinstance(node, ast.Call) and _tail_name(node.func) == "cls":
                    for kw in node.keywords:
                        service = self._made_service(kw.value)
                        if kw.arg and service:
                            out[kw.arg] = service
        return out

    def _made_service(self, node: ast.AST) -> str | None:
        """The service of a client-making call (``make_client`` / ``.client``), None for anything else."""
        if not isinstance(node, ast.Call) or _tail_name(node.func) not in ("make_client", "client"):
            return None
        if _tail_name(node.func) == "client" and not self._is_boto_client_call(node):
            return None
        arg = node.args[0] if node.args else next((k.value for k in node.keywords
                                                   if k.arg in ("service", "service_name")), None)
        service = _literal(arg)
        if service is None:
            raise ScanError(f"a client is made with a service that is not a string literal (line {node.lineno})")
        return service

    @staticmethod
    def _is_boto_client_call(node: ast.Call) -> bool:
        # boto3.client(...), boto3.session.Session().client(...), session.client(...): not temporal's Client.
        func = node.func
        assert isinstance(func, ast.Attribute)
        text = ast.unparse(func.value)
        return "boto3" in text or "Session" in text or "session" in text

    def _created_services(self) -> set[str]:
        out: set[str] = set()
        for path, module in self.modules.items():
            for node in _walk_skipping(module, FACTORIES):
                try:
                    service = self._made_service(node)
                except ScanError as err:
                    raise ScanError(f"{path}: {err}") from None
                if service:
                    out.add(service)
                if isinstance(node, ast.Call) and _tail_name(node.func) == "SignedHttp":
                    out.add(self._signed_service(node))
        return out

    @staticmethod
    def _signed_service(node: ast.Call) -> str:
        arg = node.args[2] if len(node.args) > 2 else next((k.value for k in node.keywords if k.arg == "service"),
                                                            None)
        service = _literal(arg)
        if service is None:
            raise ScanError(f"SignedHttp made with a service that is not a string literal (line {node.lineno})")
        return service

    # -- resolving an expression to a client

    def resolve(self, node: ast.AST, ctx: _Ctx) -> Res:
        if isinstance(node, ast.Call):
            service = self._made_service(node)
            if service:
                return Client(service)
            if _tail_name(node.func) == "SignedHttp":
                return Client(self._signed_service(node), signed_http=True)
            return NOT
        if isinstance(node, ast.IfExp):
            return self._combine([self.resolve(node.body, ctx), self.resolve(node.orelse, ctx)], node, ctx)
        if isinstance(node, ast.BoolOp):
            return self._combine([self.resolve(v, ctx) for v in node.values], node, ctx)
        if isinstance(node, ast.Name):
            return self._resolve_name(node.id, ctx)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and ctx.cls is not None:
                return self._resolve_self_attr(node.attr, ctx)
            base = _tail_name(node.value)
            if base and _bare(base).endswith("clients") and node.attr in self.fields:
                return Client(self.fields[node.attr])
            return UNKNOWN if _bare(node.attr) in CLIENT_NAMES else NOT
        return NOT

    def _combine(self, results: list[Res], node: ast.AST, ctx: _Ctx) -> Res:
        # ``None`` alternatives (``x if creds else None``) resolve to NOT and do not make a client less a client.
        clients = {r for r in results if isinstance(r, Client)}
        if len(clients) > 1:
            raise ScanError(f"{ctx.path}:{getattr(node, 'lineno', '?')}: one name holds clients of "
                            f"{sorted(c.service for c in clients)}")
        if clients:
            return clients.pop()
        return UNKNOWN if any(r is UNKNOWN for r in results) else NOT

    def _param_res(self, arg: ast.arg, ctx: _Ctx) -> Res:
        annotation = ast.unparse(arg.annotation) if arg.annotation else ""
        if "SignedHttp" in annotation:
            if arg.arg not in SIGNED_HTTP_NAMES:
                raise ScanError(f"{ctx.path}:{arg.lineno}: SignedHttp parameter {arg.arg!r} does not say its "
                                f"service (add it to SIGNED_HTTP_NAMES)")
            return Client(SIGNED_HTTP_NAMES[arg.arg], signed_http=True)
        service = CLIENT_NAMES.get(_bare(arg.arg))
        if service:
            return Client(service)
        # boto3 clients are typed ``Any`` (or ``object``) here: a parameter annotated with a concrete type (a contract model, a
        # str) is not one. Of another name and untyped (or ``Any``), it is not known to be a client, nor not to be.
        if annotation and "Any" not in annotation and annotation != "object":
            return NOT
        return UNKNOWN

    def _once(self, key: tuple[Any, ...], resolve: Callable[[], Res]) -> Res:
        """``resolve()``, unless ``key`` is already being resolved: a cycle (``x = x + 1``) adds no binding."""
        if key in self._resolving:
            return NOT
        self._resolving.add(key)
        try:
            return resolve()
        finally:
            self._resolving.discard(key)

    def _resolve_name(self, name: str, ctx: _Ctx) -> Res:
        return self._once(("name", id(ctx.funcs[-1]) if ctx.funcs else 0, name),
                          lambda: self._resolve_name_uncached(name, ctx))

    def _resolve_name_uncached(self, name: str, ctx: _Ctx) -> Res:
        for depth in range(len(ctx.funcs) - 1, -1, -1):
            func = ctx.funcs[depth]
            inner = _Ctx(ctx.path, ctx.cls, ctx.funcs[: depth + 1])
            results: list[Res] = [self._param_res(p, inner) for p in _params(func) if p.arg == name]
            for node in _own_nodes(func):
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                        results.append(self.resolve(node.value, inner))
                    elif any(name in {n.id for n in ast.walk(t) if isinstance(n, ast.Name)} for t in targets):
                        results.append(NOT)  # unpacking: not a client we made
                elif isinstance(node, ast.For | ast.comprehension | ast.withitem | ast.NamedExpr):
                    target = node.optional_vars if isinstance(node, ast.withitem) else node.target
                    if target is not None and name in {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}:
                        results.append(NOT)
            if results:
                return self._combine(results, func, inner)
        return NOT  # a module-level name, an import or a builtin

    def _resolve_self_attr(self, attr: str, ctx: _Ctx) -> Res:
        assert ctx.cls is not None
        return self._once(("attr", id(ctx.cls), attr), lambda: self._resolve_self_attr_uncached(attr, ctx))

    def _resolve_self_attr_uncached(self, attr: str, ctx: _Ctx) -> Res:
        assert ctx.cls is not None
        results: list[Res] = []
        for item in ctx.cls.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == attr:
                service = CLIENT_NAMES.get(_bare(attr))  # a dataclass field
                results.append(Client(service) if service else NOT)
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                method_ctx = _Ctx(ctx.path, ctx.cls, (item,))
                for node in ast.walk(item):
                    if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        if any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                               and t.value.id == "self" and t.attr == attr for t in targets):
                            results.append(self.resolve(node.value, method_ctx))
        if not results:  # set by a base class
            service = CLIENT_NAMES.get(_bare(attr))
            return Client(service) if service else UNKNOWN
        return self._combine(results, ctx.cls, ctx)

    # -- walking the code

    def scan(self) -> Scan:
        out = Scan()
        for path, module in self.modules.items():
            self._check_helpers_unused(path, module)
            self._walk(module, _Ctx(path, None, ()), out, skipping=False)
        for action, uses in out.actions.items():
            if action.lower() not in iam_database():
                raise ScanError(f"{action} (used at {uses[0]}) is not an IAM action in parliament's database")
        return out

    def _check_helpers_unused(self, path: str, module: ast.Module) -> None:
        names = set().union(*self.helpers.values()) if self.helpers else set()
        for node in ast.walk(module):
            ref = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if ref in names:
                raise ScanError(f"{path}:{getattr(node, 'lineno', '?')}: the service refers to provisioning helper {ref}; "
                                f"its AWS calls would then need granting (remove it from PROVISIONING_HELPERS)")

    def _walk(self, node: ast.AST, ctx: _Ctx, out: Scan, skipping: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_ctx, child_skipping = ctx, skipping
            if isinstance(child, ast.ClassDef):
                child_ctx = _Ctx(ctx.path, child, ())
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                child_ctx = _Ctx(ctx.path, ctx.cls, (*ctx.funcs, child))
                child_skipping = skipping or (not ctx.funcs and ctx.cls is None
                                              and child.name in self.helpers.get(ctx.path, set()))
            elif isinstance(child, ast.Attribute):
                self._attribute(child, ctx, out, skipping)
            elif isinstance(child, ast.Call):
                self._call(child, ctx, out, skipping)
            self._walk(child, child_ctx, out, child_skipping)

    def _record(self, out: Scan, action: str, use: Use, skipping: bool) -> None:
        if skipping:
            out.skipped.append(use)
        else:
            out.add(action, use)

    def _attribute(self, node: ast.Attribute, ctx: _Ctx, out: Scan, skipping: bool) -> None:
        name = node.attr
        interesting = name in self.op_names or name in TRANSFER_ACTIONS or name in ("get_paginator", "get_waiter")
        if not interesting and not isinstance(node.value, ast.Name | ast.Attribute):
            return
        res = self.resolve(node.value, ctx)
        where = f"{ctx.path}:{node.lineno}"
        if isinstance(res, _Unknown) and interesting and name not in ("copy",):
            raise ScanError(f"{where}: {ast.unparse(node)} looks like an AWS call but the service of "
                            f"{ast.unparse(node.value)} cannot be determined")
        if not isinstance(res, Client) or res.signed_http:
            return  # signed HTTP: handled at the call (its URL); NOT: not a client
        service = res.service
        use = Use(ctx.path, node.lineno, f"{service}.{name}")
        if name in ("get_paginator", "get_waiter"):
            return  # handled at the call, which names the operation
        if name in TRANSFER_ACTIONS:
            if service != "s3":
                raise ScanError(f"{where}: transfer method {name} on a {service} client")
            for action in TRANSFER_ACTIONS[name]:
                self._record(out, action, use, skipping)
            return
        if name in HARMLESS_CLIENT_ATTRS:
            return
        for action in actions_of(service, name):
            self._record(out, action, use, skipping)

    def _call(self, node: ast.Call, ctx: _Ctx, out: Scan, skipping: bool) -> None:
        self._check_handover(node, ctx)
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr not in ("get_paginator", "get_waiter", "request"):
            return
        res = self.resolve(func.value, ctx)
        if not isinstance(res, Client):
            return
        where = f"{ctx.path}:{node.lineno}"
        if func.attr == "request":
            if res.signed_http:
                action = self._signed_request(node, res.service, ctx)
                self._record(out, action, Use(ctx.path, node.lineno, f"{res.service} signed HTTP"), skipping)
            return
        name = _literal(node.args[0] if node.args else None)
        if name is None:
            raise ScanError(f"{where}: {func.attr} with a name that is not a string literal")
        if func.attr == "get_paginator":
            if name not in paginators(res.service):
                raise ScanError(f"{where}: {res.service} has no paginator {name!r}")
            operation = name
        else:
            polled = waiters(res.service).get(name)
            if polled is None:
                raise ScanError(f"{where}: {res.service} has no waiter {name!r}")
            operation = next(m for m, op in operations(res.service).items() if op == polled)
        use = Use(ctx.path, node.lineno, f"{res.service}.{func.attr}({name!r})")
        for action in actions_of(res.service, operation):
            self._record(out, action, use, skipping)

    # -- handing a client over

    def _callee_params(self, node: ast.Call, ctx: _Ctx) -> tuple[list[str], list[ast.expr], list[ast.keyword]] | None:
        func, args = node.func, list(node.args)
        if isinstance(func, ast.Name) and func.id == "partial" and args:
            func, args = args[0], args[1:]
        name = _tail_name(func)
        if name == "cls" and ctx.cls is not None:
            name = ctx.cls.name
        if (isinstance(func, ast.Attribute) and not (isinstance(func.value, ast.Name) and func.value.id == "self")
                and name not in self.classes):
            return None  # a method of some other object: not ours to check
        if name in self.classes and len(self.classes[name]) == 1:
            cls = self.classes[name][0]
            init = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
            if init is not None:
                return [a.arg for a in _params(init)][1:], args, node.keywords
            fields = [i.target.id for i in cls.body if isinstance(i, ast.AnnAssign) and isinstance(i.target, ast.Name)]
            return fields, args, node.keywords
        candidates: list[FuncNode] = []
        if isinstance(func, ast.Attribute) and ctx.cls is not None:
            candidates = [f for f in ctx.cls.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                          and f.name == name]
            skip = 1
        elif isinstance(func, ast.Name):
            candidates = list(self.functions.get(func.id, []))
            skip = 0
        if len(candidates) != 1:
            return None
        return [a.arg for a in _params(candidates[0])][skip:], args, node.keywords

    def _check_handover(self, node: ast.Call, ctx: _Ctx) -> None:
        found = self._callee_params(node, ctx)
        if found is None:
            return
        params, args, keywords = found
        pairs = [(params[i] if i < len(params) else None, a) for i, a in enumerate(args)]
        pairs += [(k.arg, k.value) for k in keywords]
        for param, arg in pairs:
            res = self.resolve(arg, ctx)
            if not isinstance(res, Client):
                continue
            expected = (SIGNED_HTTP_NAMES if res.signed_http else CLIENT_NAMES).get(_bare(param or ""))
            if res.signed_http and param in self.fields:
                expected = None
            if param in self.fields and not res.signed_http:
                expected = self.fields[param]
            if expected != res.service:
                raise ScanError(f"{ctx.path}:{node.lineno}: a {res.service} client is passed as {param!r} of "
                                f"{ast.unparse(node.func)}, whose name does not say {res.service}")

    # -- signed HTTP

    def _signed_request(self, node: ast.Call, service: str, ctx: _Ctx) -> str:
        where = f"{ctx.path}:{node.lineno}"
        method = _literal(node.args[0] if node.args else None)
        url = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "url"), None)
        if method is None or url is None:
            raise ScanError(f"{where}: signed request without a literal method and a URL")
        actions = set()
        for pattern in self._url_patterns(url, ctx, 0):
            routes = [r for r in SIGNED_HTTP_ROUTES
                      if r.service == service and r.method == method and re.search(r.pattern, pattern)]
            if len(routes) != 1:
                raise ScanError(f"{where}: signed {service} {method} {pattern} matches {len(routes)} routes")
            actions.add(routes[0].action)
        if len(actions) != 1:
            raise ScanError(f"{where}: signed request to several APIs {sorted(actions)}")
        return actions.pop()

    def _url_patterns(self, node: ast.AST, ctx: _Ctx, depth: int) -> list[str]:
        """The URL an expression makes, every formatted value as ``{}``, following locals and this class's
        callers of a parameter."""
        if depth > 5:
            raise ScanError(f"{ctx.path}: URL followed too far")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            parts = [[str(v.value)] if isinstance(v, ast.Constant) else ["{}"] for v in node.values]
            out = [""]
            for options in parts:
                out = [o + p for o in out for p in options]
            return out
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return [a + b for a in self._url_patterns(node.left, ctx, depth + 1)
                    for b in self._url_patterns(node.right, ctx, depth + 1)]
        if isinstance(node, ast.Name) and ctx.funcs:
            func = ctx.funcs[-1]
            values = [n.value for n in _own_nodes(func) if isinstance(n, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == node.id for t in n.targets)]
            if values:
                return [p for v in values for p in self._url_patterns(v, ctx, depth + 1)]
            params = [a.arg for a in _params(func)]
            if node.id in params and ctx.cls is not None:
                return self._from_callers(func, params.index(node.id), ctx, depth)
        raise ScanError(f"{ctx.path}:{getattr(node, 'lineno', '?')}: cannot tell the URL {ast.unparse(node)}")

    def _from_callers(self, func: FuncNode, index: int, ctx: _Ctx, depth: int) -> list[str]:
        """The URL argument at ``index`` (``self`` is 0) of every call of ``self.<func>`` in the class."""
        assert ctx.cls is not None
        out: list[str] = []
        for method in ctx.cls.body:
            if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(method):
                if not isinstance(call, ast.Call):
                    continue
                target, args = call.func, list(call.args)
                if isinstance(target, ast.Name) and target.id == "partial" and args:
                    target, args = args[0], args[1:]
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self" and target.attr == func.name and len(args) >= index):
                    out += self._url_patterns(args[index - 1], _Ctx(ctx.path, ctx.cls, (method,)), depth + 1)
        if not out:
            raise ScanError(f"{ctx.path}: no caller of {func.name} found to tell its URL")
        return out


def scan(root: Path, packages: Iterable[str] = SERVICE_PACKAGES,
         helpers: dict[str, set[str]] | None = None) -> Scan:
    return Scanner(root, packages, helpers).scan()
