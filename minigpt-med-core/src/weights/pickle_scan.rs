//! A bound on what a `.pth` pickle can make its reader build, checked before candle's reader
//! runs. That reader clones a memo entry on every get and drops nested values recursively, so a
//! 300-byte pickle doubling a list through its memo 40 times asks for 2^40 values, and a million
//! nested one-tuples overflow the stack when dropped; neither is catchable.
//!
//! The scan walks the opcodes once, keeping for every stack value only how many values it holds
//! and how deeply they nest, and fails when either passes its limit. It executes nothing.

/// Most values the pickle may materialize (counting every memo get as a copy, as the reader
/// makes one). A 7B checkpoint's pickle builds tens of thousands.
const MAX_VALUES: u64 = 50_000_000;
/// Deepest nesting of containers (a state dict nests five or six levels).
const MAX_DEPTH: u32 = 1_000;
/// Largest `data.pkl` read (a 7B checkpoint's is well under a megabyte).
pub(crate) const MAX_PICKLE_BYTES: u64 = 256 << 20;

#[derive(Clone, Copy)]
enum Item {
    Mark,
    Value { values: u64, depth: u32 },
}

const ONE: Item = Item::Value { values: 1, depth: 0 };

struct Scan<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: std::collections::HashMap<u64, Item>,
    built: u64,
}

impl Scan<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("the pickle ends inside an opcode")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// Skips a length-prefixed argument whose length takes `n` bytes.
    fn counted(&mut self, n: usize) -> Result<(), String> {
        let len = self.uint(n)?;
        let len = usize::try_from(len).map_err(|_| "a pickle argument longer than memory")?;
        self.take(len).map(|_| ())
    }

    fn line(&mut self) -> Result<&[u8], String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("the pickle ends inside a text argument")?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    fn push(&mut self, item: Item) -> Result<(), String> {
        if let Item::Value { values, depth } = item {
            self.built = self.built.saturating_add(values);
            if self.built > MAX_VALUES {
                return Err(format!("the pickle builds more than {MAX_VALUES} values (a memo or copy bomb?)"));
            }
            if depth > MAX_DEPTH {
                return Err(format!("the pickle nests values more than {MAX_DEPTH} deep"));
            }
        }
        if self.stack.len() >= 10_000_000 {
            return Err("the pickle's stack grows past 10 million entries".into());
        }
        self.stack.push(item);
        Ok(())
    }

    fn pop(&mut self) -> Result<(u64, u32), String> {
        match self.stack.pop() {
            Some(Item::Value { values, depth }) => Ok((values, depth)),
            _ => Err("malformed pickle: a value was expected on the stack".into()),
        }
    }

    /// Pops everything above the topmost mark (and the mark).
    fn pop_mark(&mut self) -> Result<(u64, u32), String> {
        let (mut values, mut depth) = (0u64, 0u32);
        loop {
            match self.stack.pop() {
                Some(Item::Mark) => return Ok((values, depth)),
                Some(Item::Value { values: v, depth: d }) => {
                    values = values.saturating_add(v);
                    depth = depth.max(d);
                }
                None => return Err("malformed pickle: no mark on the stack".into()),
            }
        }
    }

    /// A container of what was popped: one value more, one level deeper.
    fn wrap(&mut self, (values, depth): (u64, u32)) -> Result<(), String> {
        self.push(Item::Value { values: values.saturating_add(1), depth: depth.saturating_add(1) })
    }

    /// Adds `(values, depth)` to the container on top of the stack (APPEND, SETITEM, BUILD).
    fn add_to_top(&mut self, (values, depth): (u64, u32)) -> Result<(), String> {
        match self.stack.last_mut() {
            Some(Item::Value { values: v, depth: d }) => {
                *v = v.saturating_add(values);
                *d = (*d).max(depth.saturating_add(1));
                self.built = self.built.saturating_add(values);
                if self.built > MAX_VALUES || *d > MAX_DEPTH {
                    return Err("the pickle builds too much, or nests too deep".into());
                }
                Ok(())
            }
            _ => Err("malformed pickle: no container on the stack".into()),
        }
    }

    fn get(&mut self, id: u64) -> Result<(), String> {
        let item = *self.memo.get(&id).ok_or_else(|| format!("malformed pickle: memo entry {id} is not set"))?;
        self.push(item)
    }

    fn put(&mut self, id: u64) -> Result<(), String> {
        let top = *self.stack.last().ok_or("malformed pickle: nothing to memoize")?;
        if self.memo.len() >= 10_000_000 {
            return Err("the pickle's memo grows past 10 million entries".into());
        }
        self.memo.insert(id, top);
        Ok(())
    }
}

/// Checks the pickle `data` against the limits above; `Err` says which was passed.
pub(crate) fn check(data: &[u8]) -> Result<(), String> {
    let mut s = Scan { data, pos: 0, stack: Vec::new(), memo: Default::default(), built: 0 };
    loop {
        let op = *s.take(1)?.first().ok_or("the pickle is empty")?;
        match op {
            b'.' => return Ok(()),
            0x80 => s.counted_fixed(1)?,                                           // PROTO
            0x95 => s.counted_fixed(8)?,                                           // FRAME
            b'(' => s.push(Item::Mark)?,                                           // MARK
            b'}' | b']' | b')' | 0x8f => s.push(ONE)?,                             // EMPTY_DICT/LIST/TUPLE/SET
            b'N' | 0x88 | 0x89 => s.push(ONE)?,                                    // NONE, NEWTRUE, NEWFALSE
            b'K' => s.counted_fixed(1).and_then(|()| s.push(ONE))?,                // BININT1
            b'M' => s.counted_fixed(2).and_then(|()| s.push(ONE))?,                // BININT2
            b'J' => s.counted_fixed(4).and_then(|()| s.push(ONE))?,                // BININT
            b'G' => s.counted_fixed(8).and_then(|()| s.push(ONE))?,                // BINFLOAT
            0x8a | b'U' | b'C' | 0x8c => s.counted(1).and_then(|()| s.push(ONE))?, // LONG1, SHORT_BIN*
            0x8b | b'T' | b'B' | b'X' => s.counted(4).and_then(|()| s.push(ONE))?, // LONG4, BIN*
            0x8d | 0x8e | 0x96 => s.counted(8).and_then(|()| s.push(ONE))?,        // *8 strings, BYTEARRAY8
            b'I' | b'L' | b'S' | b'V' | b'F' => s.line().map(|_| ()).and_then(|()| s.push(ONE))?,
            b'c' => {
                // GLOBAL: module and name lines.
                s.line()?;
                s.line()?;
                s.push(ONE)?
            }
            b'P' => s.line().map(|_| ()).and_then(|()| s.push(ONE))?, // PERSID
            b'Q' => s.pop().and_then(|_| s.push(ONE))?,               // BINPERSID
            0x93 => {
                // STACK_GLOBAL: module and name from the stack.
                s.pop()?;
                s.pop()?;
                s.push(ONE)?
            }
            0x85 => s.pop().and_then(|v| s.wrap(v))?, // TUPLE1
            0x86 | 0x87 => {
                // TUPLE2, TUPLE3
                let n = if op == 0x86 { 2 } else { 3 };
                let mut acc = (0u64, 0u32);
                for _ in 0..n {
                    let (v, d) = s.pop()?;
                    acc = (acc.0.saturating_add(v), acc.1.max(d));
                }
                s.wrap(acc)?
            }
            b't' | b'l' | b'd' | 0x91 => s.pop_mark().and_then(|v| s.wrap(v))?, // TUPLE, LIST, DICT, FROZENSET
            b'a' => s.pop().and_then(|v| s.add_to_top(v))?,                     // APPEND
            b's' => {
                // SETITEM
                let (v1, d1) = s.pop()?;
                let (v2, d2) = s.pop()?;
                s.add_to_top((v1.saturating_add(v2), d1.max(d2)))?
            }
            b'e' | b'u' | 0x90 => s.pop_mark().and_then(|v| s.add_to_top(v))?, // APPENDS, SETITEMS, ADDITEMS
            b'b' => s.pop().and_then(|v| s.add_to_top(v))?,                    // BUILD
            b'R' | 0x81 => {
                // REDUCE, NEWOBJ: callable (or class) and arguments make one value.
                let (v1, d1) = s.pop()?;
                let (v2, d2) = s.pop()?;
                s.wrap((v1.saturating_add(v2), d1.max(d2)))?
            }
            0x92 => {
                // NEWOBJ_EX: class, args, kwargs.
                let mut acc = (0u64, 0u32);
                for _ in 0..3 {
                    let (v, d) = s.pop()?;
                    acc = (acc.0.saturating_add(v), acc.1.max(d));
                }
                s.wrap(acc)?
            }
            b'o' => s.pop_mark().and_then(|v| s.wrap(v))?, // OBJ
            b'i' => {
                // INST: module and name lines, arguments up to the mark.
                s.line()?;
                s.line()?;
                s.pop_mark().and_then(|v| s.wrap(v))?
            }
            b'0' => s.pop().map(|_| ())?,      // POP
            b'1' => s.pop_mark().map(|_| ())?, // POP_MARK
            b'2' => {
                // DUP: a copy of the top.
                let top = *s.stack.last().ok_or("malformed pickle: nothing to duplicate")?;
                s.push(top)?
            }
            b'p' => {
                let id = parse_id(s.line()?)?;
                s.put(id)?
            }
            b'q' => s.uint(1).and_then(|id| s.put(id))?,
            b'r' => s.uint(4).and_then(|id| s.put(id))?,
            0x94 => s.put(s.memo.len() as u64)?, // MEMOIZE
            b'g' => {
                let id = parse_id(s.line()?)?;
                s.get(id)?
            }
            b'h' => s.uint(1).and_then(|id| s.get(id))?,
            b'j' => s.uint(4).and_then(|id| s.get(id))?,
            0x82 => s.counted_fixed(1).and_then(|()| s.push(ONE))?, // EXT1
            0x83 => s.counted_fixed(2).and_then(|()| s.push(ONE))?, // EXT2
            0x84 => s.counted_fixed(4).and_then(|()| s.push(ONE))?, // EXT4
            other => return Err(format!("unknown pickle opcode 0x{other:02x} at byte {}", s.pos - 1)),
        }
    }
}

impl Scan<'_> {
    /// Skips a fixed-size argument of `n` bytes.
    fn counted_fixed(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }
}

fn parse_id(line: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(line).ok().and_then(|t| t.trim().parse().ok()).ok_or_else(|| "malformed pickle memo id".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_state_dict_passes() {
        // {"a": (1, 2), "b": [None]} as protocol 2: PROTO 2, EMPTY_DICT, BINPUT 0, MARK, ...
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01K\x02\x86q\x02X\x01\x00\x00\x00bq\x03]q\x04Naq\x05u.";
        check(p).unwrap();
    }

    #[test]
    fn memo_doubling_is_refused() {
        // EMPTY_LIST, BINPUT 0, then 60 x (BINGET 0, BINGET 0, TUPLE2, BINPUT 0): each tuple
        // holds two copies of the previous one, as the reader would clone them.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..60 {
            p.extend(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        let e = check(&p).unwrap_err();
        assert!(e.contains("more than 50000000 values"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        // N, then a million TUPLE1: ((((None,),),),...).
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.push(b'.');
        let e = check(&p).unwrap_err();
        assert!(e.contains("more than 1000 deep"), "{e}");
    }

    #[test]
    fn truncated_and_unknown_pickles_are_refused() {
        assert!(check(b"\x80\x02X\xff\xff\x00\x00ab").unwrap_err().contains("ends inside"));
        assert!(check(b"\x80\x02\xfe.").unwrap_err().contains("unknown pickle opcode"));
        assert!(check(b"\x80\x02h\x05.").unwrap_err().contains("memo entry 5"));
    }
}
