//! The routing table: default deny, first matching rule wins.
//!
//! A rule matches frames from one bus whose logical id satisfies `id & mask == match & mask`
//! (the secure bits are never part of a match), names the destination bus, rewrites the
//! logical id in the order of the kernel's cangw (AND, then OR, then XOR, then SET), and says
//! how each side is secured: opened with an inbound link's session or required plain, sealed
//! with an outbound link's session (E = 1) or sent plain (E = 0).

use crate::error::{Error, Result};
use crate::ids::{self, EXTENDED_ID_MASK, SECURE_BITS};

/// A link number: the index of a session in the gateway.
pub type LinkId = u8;

/// An identifier rewrite, applied to the logical id as cangw applies its modifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRewrite {
    /// Bits kept (AND).
    pub and: u32,
    /// Bits set (OR).
    pub or: u32,
    /// Bits flipped (XOR).
    pub xor: u32,
    /// A replacement id (SET), applied last.
    pub set: Option<u32>,
}

impl Default for IdRewrite {
    fn default() -> Self {
        IdRewrite {
            and: EXTENDED_ID_MASK,
            or: 0,
            xor: 0,
            set: None,
        }
    }
}

impl IdRewrite {
    fn check(&self) -> Result<()> {
        for (name, value) in [("OR", self.or), ("XOR", self.xor)]
            .into_iter()
            .chain(self.set.map(|v| ("SET", v)))
        {
            if value & !(EXTENDED_ID_MASK & !SECURE_BITS) != 0 {
                return Err(Error::InvalidArgument(format!(
                    "{name} operand 0x{value:X} touches bits outside the logical 29-bit id \
                     (bits 15..=17 belong to the secure layer)"
                )));
            }
        }
        Ok(())
    }

    /// The rewritten logical id. Operands were checked, so the result keeps the secure bits
    /// clear and fits in 29 bits.
    pub fn apply(&self, logical_id: u32) -> u32 {
        let id = ((logical_id & self.and) | self.or) ^ self.xor;
        self.set.unwrap_or(id) & EXTENDED_ID_MASK & !SECURE_BITS
    }
}

/// One routing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The bus the frame arrives on.
    pub src_bus: u8,
    /// The logical id to match, under `mask`.
    pub match_id: u32,
    /// Which logical id bits must equal `match_id`'s.
    pub mask: u32,
    /// The bus the frame leaves on.
    pub dst_bus: u8,
    /// The id rewrite.
    pub rewrite: IdRewrite,
    /// Open with this link's session (the frame must have E = 1), or require a plain frame.
    pub inbound: Option<LinkId>,
    /// Seal with this link's session (E = 1), or send plain (E = 0).
    pub outbound: Option<LinkId>,
    /// Send on the destination as CAN FD (the FD secured form when sealing).
    pub fd: bool,
}

impl Rule {
    /// Check a rule's fields.
    pub fn check(&self) -> Result<()> {
        for (name, value) in [("match id", self.match_id), ("mask", self.mask)] {
            if value & !(EXTENDED_ID_MASK & !SECURE_BITS) != 0 {
                return Err(Error::InvalidArgument(format!(
                    "{name} 0x{value:X} must be a logical 29-bit id (bits 15..=17 clear)"
                )));
            }
        }
        self.rewrite.check()
    }

    /// Whether this rule admits a frame with this logical id from this bus.
    pub fn matches(&self, bus: u8, logical_id: u32) -> bool {
        self.src_bus == bus && (logical_id ^ self.match_id) & self.mask == 0
    }
}

/// An ordered list of rules; a frame no rule admits is dropped.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    rules: Vec<Rule>,
}

impl RoutingTable {
    /// Append a rule (checked).
    pub fn push(&mut self, rule: Rule) -> Result<()> {
        rule.check()?;
        self.rules.push(rule);
        Ok(())
    }

    /// The rules, in match order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Remove every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The first rule admitting a raw frame id from `bus` (its secure bits are ignored).
    pub fn route(&self, bus: u8, can_id: u32) -> Option<&Rule> {
        let logical_id = ids::logical(can_id);
        self.rules.iter().find(|r| r.matches(bus, logical_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src_bus: u8, match_id: u32, mask: u32) -> Rule {
        Rule {
            src_bus,
            match_id,
            mask,
            dst_bus: 1 - src_bus,
            rewrite: IdRewrite::default(),
            inbound: None,
            outbound: None,
            fd: false,
        }
    }

    #[test]
    fn first_match_wins_and_default_is_deny() {
        let mut table = RoutingTable::default();
        table.push(rule(1, 0x1408_0005, 0x1FFC_7FFF)).unwrap();
        table.push(rule(1, 0x1400_0000, 0x1F00_0000)).unwrap();
        assert_eq!(table.route(1, 0x1408_0005).unwrap().mask, 0x1FFC_7FFF);
        // E set: the same rule matches
        assert_eq!(table.route(1, 0x140A_0005).unwrap().mask, 0x1FFC_7FFF);
        assert_eq!(table.route(1, 0x1408_0006).unwrap().mask, 0x1F00_0000);
        assert!(table.route(0, 0x1408_0005).is_none());
        assert!(table.route(1, 0x0408_0005).is_none());
    }

    #[test]
    fn rewrite_follows_cangw_order() {
        let rw = IdRewrite {
            and: 0x1FFC_0000,
            or: 0x0000_0001,
            xor: 0x0000_0003,
            set: None,
        };
        assert_eq!(rw.apply(0x1408_0005), 0x1408_0002);
        let set = IdRewrite {
            set: Some(0x1000_0000),
            ..IdRewrite::default()
        };
        assert_eq!(set.apply(0x1408_0005), 0x1000_0000);
    }

    #[test]
    fn rules_may_not_touch_secure_bits() {
        let mut table = RoutingTable::default();
        assert!(table.push(rule(0, 0x0002_0000, 0)).is_err());
        assert!(table.push(rule(0, 0, 0x0001_8000)).is_err());
        let mut r = rule(0, 0, 0);
        r.rewrite.or = ids::ENCRYPTION_FLAG;
        assert!(table.push(r).is_err());
        r.rewrite.or = 0;
        r.rewrite.set = Some(0x2000_0000);
        assert!(table.push(r).is_err());
    }
}
