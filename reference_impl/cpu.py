"""The x86 vCPU's migration blocker under KVM: invtsc (kvm_arch_init_vcpu, target/i386/kvm/kvm.c).

Read in 7.2.22, 10.0.2 and 10.2.2 (the same code): when the vCPU's CPUID 0x80000007 EDX has invtsc and no
TSC frequency was set (env->user_tsc_khz), kvm_arch_init_vcpu adds "State blocked by non-migratable CPU device
(invtsc flag)" with migrate_add_blocker. With --only-migratable that call fails, kvm_arch_init_vcpu returns
its -EACCES and kvm_init_vcpu ends QEMU's start with "kvm_init_vcpu: kvm_arch_init_vcpu failed (0): Permission
denied" (vCPU 0 is the first realized; measured on all three versions, docs/real-qemu-facts.md).

Whether the vCPU has invtsc is decided from the -cpu string in target/i386/cpu.c:
- x86_cpu_parse_featurestr: "+f"/"-f" are collected apart, "f" means "f=on", "f=v" is a global property
  (applied at instance init); x86_cpu_expand_features then sets the "+" features and clears the "-" ones,
  so they win over "f=v";
- x86_cpu_expand_features: "host" and "max" (max_features) add every flag KVM reports, filtered by
  x86_cpu_get_migratable_flags while "migratable" is on (the default), and invtsc is in unmigratable_flags:
  plain ``-cpu host`` never has invtsc, ``migratable=off`` gives it where KVM reports it;
- x86_cpu_filter_features: a flag KVM does not report is dropped with a warning (a refusal with
  ``enforce``), so the blocker needs a KVM that keeps invtsc: HostFacts.kvm_invtsc, probed.
Under TCG invtsc is not supported ("TCG doesn't support requested feature"): dropped, never a blocker.

The Hyper-V blockers of hyperv_init_vcpu ("'hv-passthrough' CPU flag prevents migration, ...", and
hv-no-nonarch-coresharing=auto's) need hyperv_enabled(), which asks KVM for KVM_CAP_HYPERV first (7.2.22,
10.0.2, 10.2.2 alike; kvm_hyperv_expand_features returns at once without it): on a KVM without Hyper-V
(HostFacts.kvm_hyperv False, probed) these flags add nothing (measured on 10.0.2 and 7.2.22 on the PVM host:
migrate accepted). With Hyper-V they are not modelled (no such host measured).

Not modelled (each depends on something no probe measures, or was not read): a TSC frequency (whether this
host's KVM sets one decides if the vCPU starts at all; 10.0 also makes invtsc migratable with it), the
Hyper-V blockers on a KVM with Hyper-V (above), a named model whose
definition carries invtsc (YongFeng, 10.0+), ``migratable`` on a model without that property, ``enforce``
where invtsc is dropped (the refusal's text), and a boolean QEMU's parser might refuse.
"""

from __future__ import annotations

from reference_impl.limits import NotModelled

INVTSC_BLOCKER = "State blocked by non-migratable CPU device (invtsc flag)"
# kvm_init_vcpu's error when kvm_arch_init_vcpu returns migrate_add_blocker's -EACCES (--only-migratable).
INVTSC_ONLY_MIGRATABLE_ERROR = "kvm_init_vcpu: kvm_arch_init_vcpu failed (0): Permission denied"

_TRUE = frozenset({"on", "yes", "true", "y"})  # qapi_bool_parse
_FALSE = frozenset({"off", "no", "false", "n"})
_MAX_FEATURES = frozenset({"host", "max"})  # the models with max_features and a "migratable" property
_TSC_FREQUENCY = frozenset({"tsc-frequency", "tsc-freq"})  # feat2prop turns "_" into "-"
_HYPERV_BLOCKERS = frozenset({"hv-passthrough", "hv-no-nonarch-coresharing"})


def _flag(options: dict[str, str], plus: set[str], minus: set[str], name: str) -> bool | None:
    """The value ``name`` ends with after x86_cpu_expand_features: "-" beats "+" beats "name=value"."""
    if name in minus:
        return False
    if name in plus:
        return True
    value = options.get(name)
    if value is None:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise NotModelled(f"-cpu {name}={value} (a value QEMU's boolean parser may refuse)")


def parse_cpu(text: str) -> tuple[str, dict[str, str], set[str], set[str]]:
    """x86_cpu_parse_featurestr: (model, "key=value" options, "+" features, "-" features)."""
    model, *items = text.split(",")
    options: dict[str, str] = {}
    plus: set[str] = set()
    minus: set[str] = set()
    for item in items:
        if item.startswith("+"):
            plus.add(item[1:].replace("_", "-"))
        elif item.startswith("-"):
            minus.add(item[1:].replace("_", "-"))
        elif item:
            key, sep, value = item.partition("=")
            options[key.replace("_", "-")] = value if sep else "on"
    return model, options, plus, minus


def _hyperv_flags(options: dict[str, str], plus: set[str], minus: set[str], kvm_hyperv: bool | None) -> None:
    """hv-passthrough / hv-no-nonarch-coresharing under KVM: nothing without KVM_CAP_HYPERV, else NotModelled."""
    for name in sorted((plus | minus | set(options)) & _HYPERV_BLOCKERS):
        if kvm_hyperv is None:
            raise NotModelled(f"-cpu {name} under KVM (whether KVM offers Hyper-V was not probed)")
        if kvm_hyperv:
            raise NotModelled(f"-cpu {name} on a KVM with Hyper-V (hyperv_init_vcpu's blockers: not measured)")
        if name == "hv-no-nonarch-coresharing" and name in options:
            if options[name] not in ("on", "off", "auto"):  # an OnOffAuto property
                raise NotModelled(f"-cpu {name}={options[name]} (a value QEMU's parser refuses)")
        else:
            _flag(options, plus, minus, name)


def cpu_blocker(cpu: str | None, kvm: bool, kvm_invtsc: bool, kvm_hyperv: bool | None = None) -> str | None:
    """The blocker kvm_arch_init_vcpu adds for the vCPU of ``-cpu cpu`` (None: the executor's default model, a
    "host" model with migratable on), or None. ``kvm``: the VM runs on KVM; ``kvm_invtsc``: HostFacts.kvm_invtsc;
    ``kvm_hyperv``: HostFacts.kvm_hyperv.

    Raises NotModelled for what the module docstring lists."""
    if cpu is None:
        return None
    model, options, plus, minus = parse_cpu(cpu)
    names = plus | minus | set(options)
    if not kvm:
        if "invtsc" in names and _flag(options, plus, minus, "invtsc") and _flag(options, plus, minus, "enforce"):
            raise NotModelled("-cpu ...,+invtsc,enforce under TCG (x86_cpu_filter_features' refusal)")
        return None
    unknown = sorted(names & _TSC_FREQUENCY)
    if unknown:
        raise NotModelled(f"-cpu {unknown[0]} under KVM (a host-dependent vCPU start)")
    _hyperv_flags(options, plus, minus, kvm_hyperv)
    if model.startswith("YongFeng"):
        raise NotModelled(f"-cpu {model} under KVM (a model whose definition may carry invtsc)")
    migratable = _flag(options, plus, minus, "migratable")
    if migratable is not None and model not in _MAX_FEATURES:
        raise NotModelled(f"-cpu {model},migratable (a property only host and max have)")
    requested = _flag(options, plus, minus, "invtsc")
    # Not named: only the max_features expansion with migratable off adds it, and only where KVM reports it.
    invtsc = requested if requested is not None else model in _MAX_FEATURES and migratable is False
    if not invtsc:
        return None
    if not kvm_invtsc:
        if requested and _flag(options, plus, minus, "enforce"):
            raise NotModelled("-cpu ...,enforce where KVM drops invtsc (x86_cpu_filter_features' refusal)")
        return None
    return INVTSC_BLOCKER
