//! A page of an ordered index on the wire (`Request::List`, issue 33): each item a kind
//! byte (0 a key, 1 a common prefix), a 2-byte little-endian length and the bytes, and for
//! a key its version (8 bytes), value length (8) and value checksum (4). Decoded with every
//! length checked against what is left and the limits, and the order enforced: a node
//! cannot make a client allocate past the page it sent, nor hand it a disordered page.

use crate::limits::{MAX_KEY_BYTES, MAX_LIST_ITEMS};

/// One item of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListItem {
    Key {
        key: Vec<u8>,
        version: u64,
        len: u64,
        crc32c: u32,
    },
    /// A common prefix: every key under it, rolled up.
    Prefix(Vec<u8>),
}

impl ListItem {
    /// The key or the prefix: where the next page starts after.
    pub fn name(&self) -> &[u8] {
        match self {
            ListItem::Key { key, .. } | ListItem::Prefix(key) => key,
        }
    }
}

pub fn encode_page(items: &[ListItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| i.name().len() + 23).sum());
    for item in items {
        let (kind, name) = match item {
            ListItem::Key { key, .. } => (0u8, key),
            ListItem::Prefix(p) => (1u8, p),
        };
        out.push(kind);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        if let ListItem::Key {
            version, len, crc32c, ..
        } = item
        {
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&crc32c.to_le_bytes());
        }
    }
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err(format!(
            "a listing page cut short: {n} bytes wanted, {} left",
            b.len()
        ));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

/// A page and, last, the key the listing goes on at in the next range of a split index
/// (item kind 2).
pub fn encode_page_resuming(items: &[ListItem], resume: Option<&[u8]>) -> Vec<u8> {
    let mut out = encode_page(items);
    if let Some(r) = resume {
        out.push(2);
        out.extend_from_slice(&(r.len() as u16).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

pub fn decode_page(b: &[u8]) -> Result<Vec<ListItem>, String> {
    match decode_page_resuming(b)? {
        (items, None) => Ok(items),
        (_, Some(_)) => Err("a listing page with a resume key where none was asked".into()),
    }
}

/// A page and the resume key it ends with, if any (after every item, past the last).
pub fn decode_page_resuming(mut b: &[u8]) -> Result<(Vec<ListItem>, Option<Vec<u8>>), String> {
    let mut items: Vec<ListItem> = Vec::new();
    while !b.is_empty() {
        if b[0] == 2 {
            take(&mut b, 1)?;
            let len = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap()) as usize;
            if len > MAX_KEY_BYTES {
                return Err(format!("a resume key of {len} bytes"));
            }
            let r = take(&mut b, len)?.to_vec();
            if !b.is_empty() || items.last().is_some_and(|last| last.name() >= &r[..]) {
                return Err("a resume key not last, or not past the page".into());
            }
            return Ok((items, Some(r)));
        }
        if items.len() == MAX_LIST_ITEMS as usize {
            return Err(format!("a listing page of more than {MAX_LIST_ITEMS} items"));
        }
        let kind = take(&mut b, 1)?[0];
        let len = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap()) as usize;
        if len > MAX_KEY_BYTES {
            return Err(format!("a listed name of {len} bytes"));
        }
        let name = take(&mut b, len)?.to_vec();
        if items.last().is_some_and(|last| last.name() >= &name[..]) {
            return Err("a listing page out of key order".into());
        }
        let item = match kind {
            0 => {
                let n = |b: &mut &[u8], k| take(b, k).map(|s| s.to_vec());
                let version = u64::from_le_bytes(n(&mut b, 8)?.try_into().unwrap());
                let len = u64::from_le_bytes(n(&mut b, 8)?.try_into().unwrap());
                let crc32c = u32::from_le_bytes(n(&mut b, 4)?.try_into().unwrap());
                ListItem::Key {
                    key: name,
                    version,
                    len,
                    crc32c,
                }
            }
            1 => ListItem::Prefix(name),
            k => return Err(format!("a listed item of kind {k}")),
        };
        items.push(item);
    }
    Ok((items, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_bad_ones_are_refused() {
        let items = vec![
            ListItem::Prefix(b"{b}a/".to_vec()),
            ListItem::Key {
                key: b"{b}b".to_vec(),
                version: 7,
                len: 4096,
                crc32c: 0xdead_beef,
            },
        ];
        let page = encode_page(&items);
        assert_eq!(decode_page(&page), Ok(items.clone()));
        for cut in 0..page.len() {
            assert!(
                decode_page(&page[..cut]).is_err() || cut == 0 || cut == 8,
                "cut at {cut}"
            );
        }
        let swapped = encode_page(&[items[1].clone(), items[0].clone()]);
        assert!(decode_page(&swapped).is_err());
        let resuming = encode_page_resuming(&items, Some(b"{b}c"));
        assert_eq!(
            decode_page_resuming(&resuming),
            Ok((items.clone(), Some(b"{b}c".to_vec())))
        );
        assert!(decode_page_resuming(&encode_page_resuming(&items, Some(b"{b}a"))).is_err());
        let mut trailing = resuming.clone();
        trailing.push(1);
        assert!(decode_page_resuming(&trailing).is_err());
        let mut huge = vec![1u8];
        huge.extend_from_slice(&u16::MAX.to_le_bytes());
        assert!(decode_page(&huge).is_err());
    }
}
