#!/usr/bin/env python3
"""Extract the Python API surface of a TensorRT binding wheel, without importing it.

The stand-in ``tensorrt`` module of ``tests/test_tensorrt.py`` exposes exactly the
names the real bindings have, so a call into an API that does not exist (or no
longer exists: TensorRT 11 removed ``BuilderFlag.FP16``, the INT8 calibrators and
``EXPLICIT_BATCH``) fails in the tests instead of on a Jetson. The names are read
statically from the wheel that ``pip`` installs (``tensorrt-cu12-bindings``):

* ``tensorrt.so`` is a pybind11 module with its symbol table; its disassembly
  (``objdump -d -C``) shows every name passed to pybind11 (``class_``/``enum_``
  records, ``def``, ``def_property``, ``add_class_method``, ``enum value``,
  ``setattr``) as a ``lea`` of a string in ``.rodata``, next to the call that
  binds it. A small register/stack tracker follows those strings to the calls.
* ``__init__.py`` adds Python-level names (``nptype``, ``volume``, the
  ``Logger.<SEVERITY>`` aliases, ``__version__``); they are read from its text.

    pip download --no-deps -d /tmp/trt 'tensorrt-cu12-bindings==10.3.0'
    python benchmarks/tools/trt_api_surface.py /tmp/trt/tensorrt_cu12_bindings-10.3.0-*.whl \\
        -o tests/data/tensorrt_api_10.3.json

Needs binutils' ``objdump`` and an x86-64 wheel; nothing is imported or executed.
The extractor is heuristic about *which class* an inlined binding belongs to
(it follows the class object through registers and stack slots); ``--check``
prints well-known names so a reader can see the result is sane.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CALLER_SAVED = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")
REG64 = {
    **{f"e{r}": f"r{r}" for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")},
    **{r: f"r{r[1:]}" for r in ("ax", "bx", "cx", "dx", "si", "di")},
    **{f"r{n}d": f"r{n}" for n in range(8, 16)},
    **{f"r{n}w": f"r{n}" for n in range(8, 16)},
    **{f"r{n}b": f"r{n}" for n in range(8, 16)},
    "al": "rax",
    "bl": "rbx",
    "cl": "rcx",
    "dl": "rdx",
    "sil": "rsi",
    "dil": "rdi",
}
INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*?)\s*(?:#\s*([0-9a-f]+)\s*<(.*)>)?$")
FUNC = re.compile(r"^([0-9a-f]+) <(.*)>:$")
CHAINED = re.compile(
    r"pybind11::(class_|enum_)<.*>& pybind11::(class_|enum_)<.*>::(def\w*|value)[<(]"
)
MEM = re.compile(r"^(-?0x[0-9a-f]+|-?\d+)?\((%\w+)(?:,(%\w+)(?:,(\d))?)?\)$")


# ---------------------------------------------------------------- ELF strings


class Elf:
    """Just enough ELF64 to read NUL-terminated strings at virtual addresses."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        self.sections = []
        for i in range(shnum):
            base = shoff + i * shentsize
            _, typ, _, addr, off, size = struct.unpack_from("<IIQQQQ", data, base)
            if typ == 1 and addr:  # PROGBITS loaded in memory
                self.sections.append((addr, off, size))

    def string(self, vaddr: int) -> str | None:
        for addr, off, size in self.sections:
            if addr <= vaddr < addr + size:
                start = off + (vaddr - addr)
                end = self.data.find(b"\0", start, start + 4096)
                if end < 0:
                    return None
                raw = self.data[start:end]
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError:
                    return None
                return text if text.isprintable() or "\n" in text else None
        return None


# ---------------------------------------------------------------- the tracker


@dataclass
class Surface:
    """What the scan found: class records, members by class object, module names."""

    classes: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> record
    live: dict[Any, int] = field(default_factory=dict)  # object address -> id of its class now
    cpp_to_key: dict[str, int] = field(default_factory=dict)
    members: dict[int | str, set[str]] = field(default_factory=lambda: defaultdict(set))
    module: set[str] = field(default_factory=set)
    exported: list[Any] = field(default_factory=list)  # enum keys whose values go to scope
    unresolved: list[str] = field(default_factory=list)
    enum_keys: set[Any] = field(default_factory=set)


def _cpp_type(symbol: str, head: str) -> str | None:
    """``X`` of ``pybind11::class_<X, ...>::...`` (top-level template argument)."""
    i = symbol.find(head)
    if i < 0:
        return None
    depth, start = 0, i + len(head)
    for j in range(start, len(symbol)):
        c = symbol[j]
        if c == "<":
            depth += 1
        elif c == ">":
            if depth == 0:
                return symbol[start:j].strip()
            depth -= 1
        elif c == "," and depth == 0:
            return symbol[start:j].strip()
    return None


class Scanner:
    """Walks one function's instructions, following strings and object addresses."""

    def __init__(
        self, elf: Elf, surface: Surface, bodies: dict[str, list[tuple]], depth: int = 0
    ) -> None:
        self.elf, self.s, self.bodies, self.depth = elf, surface, bodies, depth

    def value_of(self, op: str, regs: dict, mem: dict) -> Any:
        if op.startswith("%"):
            return regs.get(REG64.get(op[1:], op[1:]))
        key = self.mem_key(op, regs)
        if key is None:
            return None
        return mem.get(key, ("load", key))

    def mem_key(self, op: str, regs: dict) -> Any:
        m = MEM.match(op)
        if not m or m.group(3):
            return None
        off = int(m.group(1) or "0", 0)
        base = m.group(2)[1:]
        if base in ("rbp", "rsp"):
            return ("addr", base, off)
        v = regs.get(REG64.get(base, base))
        if isinstance(v, tuple) and v[0] == "addr":
            return ("addr", v[1], v[2] + off)
        if v is not None:
            return ("field", v, off)
        return None

    def scan(self, name: str, body: list[tuple]) -> None:
        regs: dict[str, Any] = {"rdi": ("param", name, "rdi"), "rsi": ("param", name, "rsi")}
        mem: dict[Any, Any] = {}
        current = None
        window_cpp: str | None = None
        module_handle = ("load", ("field", ("param", name, "rdi"), 0))
        for _, op, args, target, label in body:
            ops = [a.strip() for a in _split_args(args)]
            if op.startswith("lea") and len(ops) == 2:
                dst = REG64.get(ops[1][1:], ops[1][1:])
                if target is not None:
                    text = self.elf.string(int(target, 16))
                    regs[dst] = ("str", text) if text is not None else None
                    if label and "::init_instance(" in label:
                        window_cpp = _cpp_type(label, "pybind11::class_<")
                else:
                    key = self.mem_key(ops[0], regs)
                    regs[dst] = key if key and key[0] == "addr" else None
                continue
            if len(ops) == 2 and "%xmm" in args and self.vector(op, ops, regs, mem):
                continue
            if op.startswith("mov") and len(ops) == 2 and not op.startswith("movs"):
                src, dst = ops
                val = self.value_of(src, regs, mem) if not src.startswith("$") else None
                if dst.startswith("%"):
                    regs[REG64.get(dst[1:], dst[1:])] = val
                else:
                    key = self.mem_key(dst, regs)
                    if key is not None:
                        mem[key] = val
                        if isinstance(val, tuple) and val[0] == "str":
                            mem["last_str"] = key
                continue
            tail = op.startswith("jmp") and label and "(" in label and "+0x" not in label
            if op.startswith("call") or tail:
                current = self.on_call(label or "", regs, mem, current, window_cpp, module_handle)
                if label and "type_record::type_record()" in label:
                    window_cpp = None
                this = regs.get("rdi")
                for r in CALLER_SAVED:
                    regs.pop(r, None)
                if label and CHAINED.match(label):
                    regs["rax"] = this  # .def() returns *this: the next .def is on that class
                continue
            if ops and ops[-1].startswith("%"):
                regs.pop(REG64.get(ops[-1][1:], ops[-1][1:]), None)

    def vector(self, op: str, ops: list[str], regs: dict, mem: dict) -> bool:
        """Two pointers packed in an SSE register and stored as one 16-byte record field pair."""
        src, dst = ops
        if op == "movq" and dst.startswith("%xmm") and src.startswith("%r"):
            regs[dst[1:]] = ("pair", regs.get(REG64.get(src[1:], src[1:])), None)
            return True
        if op == "punpcklqdq" and src.startswith("%xmm") and dst.startswith("%xmm"):
            low = regs.get(dst[1:])
            high = regs.get(src[1:])
            lo = low[1] if isinstance(low, tuple) and low[0] == "pair" else None
            hi = high[1] if isinstance(high, tuple) and high[0] == "pair" else None
            regs[dst[1:]] = ("pair", lo, hi)
            return True
        if op in ("movaps", "movups", "movdqa", "movdqu"):
            if src.startswith("%xmm") and not dst.startswith("%"):
                key = self.mem_key(dst, regs)
                pair = regs.get(src[1:])
                if key is not None and key[0] == "addr":
                    lo, hi = (
                        pair[1:] if isinstance(pair, tuple) and pair[0] == "pair" else (None, None)
                    )
                    mem[key] = lo
                    mem[("addr", key[1], key[2] + 8)] = hi
                return True
            if dst.startswith("%xmm") and not src.startswith("%"):
                key = self.mem_key(src, regs)
                if key is not None and key[0] == "addr":
                    regs[dst[1:]] = ("pair", mem.get(key), mem.get(("addr", key[1], key[2] + 8)))
                else:
                    regs[dst[1:]] = None
                return True
        if dst.startswith("%xmm"):
            regs[dst[1:]] = None
            return True
        return False

    def on_call(
        self, label: str, regs: dict, mem: dict, current: Any, window_cpp: str | None, module: Any
    ) -> Any:
        s = self.s

        def text(reg: str) -> str | None:
            v = regs.get(reg)
            return v[1] if isinstance(v, tuple) and v[0] == "str" else None

        def owner(reg: str) -> Any:
            return self.class_at(regs.get(reg))

        if "generic_type::initialize(" in label:
            obj, record = regs.get("rdi"), regs.get("rsi")
            name = scope = None
            if isinstance(record, tuple) and record[0] == "addr":
                v = mem.get(("addr", record[1], record[2] + 8))
                name = v[1] if isinstance(v, tuple) and v[0] == "str" else None
                scope = mem.get(("addr", record[1], record[2]))
            if name and obj is not None:
                return self.register(obj, name, scope, window_cpp)
            s.unresolved.append(f"class record without a name near {label[:60]}")
            return current
        ctor = re.match(
            r"pybind11::(class_|enum_)<(.*)>::(class_|enum_)<.*\(pybind11::handle", label
        )
        if ctor:  # an outlined class_/enum_ constructor: (this, scope handle, name, ...)
            obj, scope, name = regs.get("rdi"), regs.get("rsi"), text("rdx")
            cpp = _cpp_type(label, f"pybind11::{ctor.group(1)}<")
            name = name or self.class_name_inside(label)
            if obj is None:  # the object's address was lost on the way: still record the class
                obj = ("anonymous", len(s.classes))
            if name:
                key = self.register(obj, name, scope, cpp)
                if ctor.group(1) == "enum_":
                    s.enum_keys.add(key)
                return key
            s.unresolved.append(f"outlined constructor without a name: {label[:60]}")
            return current
        member_calls = (
            "add_class_method(",
            "generic_type::def_property_static_impl(",
            "enum_base::value(",
        )
        if any(c in label for c in member_calls):
            name = text("rsi")
            key = owner("rdi") or current or "?"
            if name:
                s.members[key].add(name)
            elif name is None:
                s.unresolved.append(f"member name unknown at {label[:60]}")
            return current
        if "enum_base::init(" in label:
            key = owner("rdi") or current
            if key is not None:
                s.enum_keys.add(key)
            return current
        if "enum_base::export_values(" in label:
            key = owner("rdi") or current
            if key is not None:
                s.exported.append(key)
            return current
        if "accessor<pybind11::detail::accessor_policies::str_attr>::operator=" in label:
            key = mem.get("last_str")  # obj.attr("name") = value: (handle, name) on the stack
            if isinstance(key, tuple) and key[0] == "addr":
                name = mem[key][1]
                target = mem.get(("addr", key[1], key[2] - 8))
                if target == module:
                    s.module.add(name)
                elif self.class_at(target) is not None:
                    s.members[self.class_at(target)].add(name)
            return current
        if label.startswith("pybind11::setattr(") or "module_::add_object(" in label:
            name = text("rsi")
            target = regs.get("rdi")
            if name and (target == module or "add_object" in label):
                s.module.add(name)
            elif name:
                s.members[owner("rdi") or "?"].add(name)
            return current
        m = re.match(r"pybind11::(class_|enum_)<", label)
        if m and re.search(r">::(def\w*|value|export_values)<?", label):
            cpp = _cpp_type(label, f"pybind11::{m.group(1)}<")
            method = re.search(r">::(def\w*|value|export_values)(?=[<(])", label)
            kind = method.group(1) if method else ""
            # The class object in rdi first: identical template code is folded across classes
            # by the linker (the symbol then names another class), the object is not.
            key = self.class_at(regs.get("rdi"))
            if key is None:
                key = s.cpp_to_key.get(cpp or "") or current or "?"
            if m.group(1) == "enum_" and key != "?":
                s.enum_keys.add(key)
            if kind == "export_values":
                if key != "?":
                    s.exported.append(key)
                return current
            names = [text("rsi")] if text("rsi") else self.names_inside(label)
            for n in names:
                s.members[key].add(n)
            if not names:
                s.unresolved.append(f"outlined {kind} without a name: {label[:80]}")
            return current
        if re.match(r"pybind11::module_& pybind11::module_::def<", label) or (
            label.startswith("pybind11::module_::def<")
        ):
            s.module.update([text("rsi")] if text("rsi") else self.names_inside(label))
            return current
        return current

    def class_at(self, v: Any) -> int | None:
        """The class whose object (or handle, or enum_base member) ``v`` is."""
        if not isinstance(v, tuple):
            return None
        live = self.s.live
        if v in live:
            return live[v]
        if v[0] == "load" and v[1] in live:
            return live[v[1]]
        if v[0] == "addr":
            return live.get(("addr", v[1], v[2] - 8))  # enum_'s enum_base, after the object
        return None

    def register(self, obj: Any, name: str, scope: Any, cpp: str | None) -> int:
        parent = self.class_at(scope)
        qual = f"{self.s.classes[parent]['name']}.{name}" if parent is not None else name
        key = len(self.s.classes)
        self.s.classes[key] = {"name": qual, "cpp": cpp}
        self.s.live[obj] = key
        if cpp:
            self.s.cpp_to_key[cpp] = key
        return key

    def class_name_inside(self, label: str) -> str | None:
        """The name a constant-propagated constructor gives its type record itself."""
        body = self.bodies.get(label)
        if not body or self.depth > 3:
            return None
        inner = Surface()
        Scanner(self.elf, inner, self.bodies, self.depth + 1).scan(label, body)
        return next((rec["name"] for rec in inner.classes.values()), None)

    def names_inside(self, label: str) -> list[str]:
        """Names a constant-propagated clone passes to pybind11 itself."""
        body = self.bodies.get(label)
        if not body or self.depth > 3:
            return []
        inner = Surface()
        Scanner(self.elf, inner, self.bodies, self.depth + 1).scan(label, body)
        return sorted(inner.members.get("?", set()) | inner.module)


def _split_args(args: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for c in args:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += c
    if cur:
        out.append(cur)
    return out


def disassemble(so: Path) -> dict[str, list[tuple]]:
    """Function name -> instructions (address, opcode, operands, target, target label)."""
    cmd = ["objdump", "-d", "-C", "--no-show-raw-insn", "-M", "att", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    bodies: dict[str, list[tuple]] = {}
    current: list[tuple] | None = None
    for line in proc.stdout.splitlines():
        f = FUNC.match(line)
        if f:
            current = bodies.setdefault(f.group(2), [])
            continue
        if current is None:
            continue
        m = INSN.match(line)
        if not m:
            continue
        addr, op, args, target, label = m.groups()
        if op.startswith(("call", "jmp")) and target is None:
            t = re.match(r"([0-9a-f]+) <(.*)>$", args)
            if t:
                target, label, args = t.group(1), t.group(2), t.group(1)
        current.append((addr, op, args, target, label))
    return bodies


# ---------------------------------------------------------------- __init__.py


def python_level(init_text: str, classes: dict[str, set[str]]) -> tuple[str, set[str]]:
    """``__version__`` and the module-level names ``__init__.py`` defines or patches in."""
    version = re.search(r'^__version__\s*=\s*"([^"]+)"', init_text, re.M)
    names = set(re.findall(r"^def (\w+)\(", init_text, re.M))
    names |= set(re.findall(r"^(\w+)\s*=", init_text, re.M))
    for cls, attr in re.findall(r"^\s*(\w+)\.(\w+)\s*=", init_text, re.M):
        if cls in classes:
            classes[cls].add(attr)
    if re.search(r"setattr\(Logger, attr, value\)", init_text) and "ILogger.Severity" in classes:
        classes.setdefault("Logger", set()).update(classes["ILogger.Severity"])
    names = {n for n in names if not n.startswith("_") or n == "__version__"}
    return (version.group(1) if version else "unknown"), names


def extract(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        so_name = next(n for n in z.namelist() if n.endswith("/tensorrt.so"))
        init_name = so_name.rsplit("/", 1)[0] + "/__init__.py"
        so = Path(z.extract(so_name, tmp))
        init_text = z.read(init_name).decode()
        elf = Elf(so.read_bytes())
        bodies = disassemble(so)
    surface = Surface()
    scanner = Scanner(elf, surface, bodies)
    binds = [n for n in bodies if re.match(r"tensorrt::bind\w+\(pybind11::module_&\)$", n)]
    for name in binds:
        scanner.scan(name, bodies[name])
    classes: dict[str, set[str]] = {}
    for key, rec in surface.classes.items():
        classes.setdefault(rec["name"], set()).update(surface.members.get(key, set()))
    enums = sorted({surface.classes[k]["name"] for k in surface.enum_keys if k in surface.classes})
    module = set(surface.module) | {n for n in classes if "." not in n}
    for key in surface.exported:
        rec = surface.classes[key]
        values = surface.members.get(key, set())
        parent = rec["name"].rsplit(".", 1)[0] if "." in rec["name"] else None
        if parent:
            classes.setdefault(parent, set()).update(values)
        else:
            module |= values
    version, extra = python_level(init_text, classes)
    module |= extra
    return {
        "tensorrt_version": version,
        "wheel": wheel.name,
        "extracted_with": "benchmarks/tools/trt_api_surface.py (objdump of tensorrt.so)",
        "module": sorted(module),
        "enums": {e: sorted(classes.get(e, ())) for e in enums},
        "classes": {c: sorted(m) for c, m in sorted(classes.items()) if c not in enums},
        "unresolved": len(surface.unresolved),
    }


CHECK = {
    "IBuilderConfig": ["DLA_core", "set_flag", "clear_flag", "get_flag", "default_device_type"],
    "Runtime": ["deserialize_cuda_engine"],
    "BuilderFlag": ["GPU_FALLBACK", "TF32", "FP16"],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("-o", "--out", type=Path)
    p.add_argument("--check", action="store_true", help="print a few well-known names")
    args = p.parse_args(argv)
    api = extract(args.wheel)
    text = json.dumps(api, indent=1, sort_keys=False) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    if args.check:
        everything = {**api["classes"], **api["enums"]}
        for cls, names in CHECK.items():
            have = set(everything.get(cls, ()))
            print(cls, {n: n in have for n in names}, file=sys.stderr)
        print("unresolved:", api["unresolved"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
