//! A timeline's member set: which safekeepers take part in its consensus,
//! by id and address, and who may send which request.
//!
//! The set is fixed when the timeline is created and changes only through
//! an explicit operation that the server logs; it is persisted with the
//! acceptor's state. Majorities (votes, commit) are counted over it, and a
//! message that claims to come from a safekeeper outside it is refused.
//! Who a message comes from is the host's business (an authenticated
//! connection's identity, or without authentication what the message
//! claims); this module only says what each sender may do. Pure: no I/O.

use std::fmt;

/// The most safekeepers a timeline can have (a majority of 7 is 4).
pub const MEMBERS_MAX: usize = 7;

/// The longest member address accepted (`host:port`).
pub const ADDRESS_BYTES_MAX: usize = 255;

/// A safekeeper's id, unique within a timeline's member set (its standby
/// name is `sk<id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sk{}", self.0)
    }
}

/// One safekeeper of a timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Where it listens, `host:port`.
    pub address: String,
}

/// Why a member set is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No member at all.
    #[error("a member set needs at least one safekeeper")]
    Empty,
    /// More than [`MEMBERS_MAX`].
    #[error("{0} members: at most {MEMBERS_MAX} are supported")]
    TooMany(usize),
    /// Two members with one id.
    #[error("safekeeper id {0} appears twice")]
    DuplicateId(u32),
    /// Two members with one address.
    #[error("address {0} appears twice")]
    DuplicateAddress(String),
    /// An address that is empty, too long or not `host:port`.
    #[error(
        "member {id}: address {address:?} is not host:port of at most {ADDRESS_BYTES_MAX} bytes"
    )]
    BadAddress {
        /// The member.
        id: u32,
        /// Its address.
        address: String,
    },
    /// A set that must hold a given safekeeper does not.
    #[error("safekeeper {0} is not a member")]
    NotAMember(u32),
}

/// A timeline's safekeepers, sorted by id.
///
/// Invariant: 1 to [`MEMBERS_MAX`] members, ids and addresses unique,
/// every address `host:port` within [`ADDRESS_BYTES_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    members: Vec<Member>,
}

impl Membership {
    /// A checked member set.
    pub fn new(mut members: Vec<Member>) -> Result<Membership, MembershipError> {
        if members.is_empty() {
            return Err(MembershipError::Empty);
        }
        if members.len() > MEMBERS_MAX {
            return Err(MembershipError::TooMany(members.len()));
        }
        members.sort_by_key(|m| m.id);
        for pair in members.windows(2) {
            if let [a, b] = pair
                && a.id == b.id
            {
                return Err(MembershipError::DuplicateId(a.id.0));
            }
        }
        for (i, member) in members.iter().enumerate() {
            if !valid_address(&member.address) {
                return Err(MembershipError::BadAddress {
                    id: member.id.0,
                    address: member.address.clone(),
                });
            }
            if members[..i].iter().any(|m| m.address == member.address) {
                return Err(MembershipError::DuplicateAddress(member.address.clone()));
            }
        }
        Ok(Membership { members })
    }

    /// The safekeepers at `addresses`, the `i`-th (from 0) as id `i + 1`
    /// (its standby name `sk<i + 1>`): how a compute control names them.
    pub fn numbered<S: AsRef<str>>(addresses: &[S]) -> Result<Membership, MembershipError> {
        let members = (1..=u32::MAX)
            .zip(addresses)
            .map(|(id, address)| Member {
                id: NodeId(id),
                address: address.as_ref().to_owned(),
            })
            .collect();
        Membership::new(members)
    }

    /// The members, by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true (a set has a member); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How many make a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The member with `id`.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The members other than `me`.
    pub fn peers_of(&self, me: NodeId) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.id != me)
    }

    /// Fails unless `id` is a member.
    pub fn require(&self, id: NodeId) -> Result<(), MembershipError> {
        if self.contains(id) {
            Ok(())
        } else {
            Err(MembershipError::NotAMember(id.0))
        }
    }
}

impl fmt::Display for Membership {
    /// `1=host:port,2=host:port,...`, the form `--member` options take.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={}", m.id.0, m.address)?;
        }
        Ok(())
    }
}

/// `host:port` with a non-empty host and a numeric port, no spaces or
/// control characters, within the length bound.
fn valid_address(address: &str) -> bool {
    if address.is_empty() || address.len() > ADDRESS_BYTES_MAX {
        return false;
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && port.parse::<u16>().is_ok()
}

/// Who sent a request to an acceptor, as its host established it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A compute control (the proposer): votes, election announcements and
    /// the elected compute's WAL.
    Proposer,
    /// The safekeeper itself: WAL it fetched from a peer in recovery.
    Local,
    /// Another safekeeper, by the id its connection established.
    Peer(NodeId),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u32, address: &str) -> Member {
        Member {
            id: NodeId(id),
            address: address.into(),
        }
    }

    fn check(members: Vec<Member>, expected: &Result<&str, MembershipError>) {
        let got = Membership::new(members).map(|m| m.to_string());
        assert_eq!(&got.as_deref().map_err(Clone::clone), expected);
    }

    #[test]
    fn member_sets_are_checked_and_sorted() {
        check(
            vec![member(3, "h:3"), member(1, "h:1"), member(2, "h:2")],
            &Ok("1=h:1,2=h:2,3=h:3"),
        );
        check(vec![], &Err(MembershipError::Empty));
        check(
            (1..=8).map(|i| member(i, &format!("h:{i}"))).collect(),
            &Err(MembershipError::TooMany(8)),
        );
        check(
            vec![member(1, "h:1"), member(1, "h:2")],
            &Err(MembershipError::DuplicateId(1)),
        );
        check(
            vec![member(1, "h:1"), member(2, "h:1")],
            &Err(MembershipError::DuplicateAddress("h:1".into())),
        );
        for bad in ["", "h", ":1", "h:x", "h:70000", "h :1", "h\n:1"] {
            check(
                vec![member(1, bad)],
                &Err(MembershipError::BadAddress {
                    id: 1,
                    address: bad.into(),
                }),
            );
        }
        check(
            vec![member(1, &"h".repeat(300))],
            &Err(MembershipError::BadAddress {
                id: 1,
                address: "h".repeat(300),
            }),
        );
        check(vec![member(7, "[::1]:5454")], &Ok("7=[::1]:5454"));
    }

    #[test]
    fn majorities_and_lookups() {
        let set = Membership::new(vec![member(1, "h:1"), member(2, "h:2"), member(3, "h:3")])
            .expect("valid");
        assert_eq!(set.quorum(), 2);
        assert!(set.contains(NodeId(2)) && !set.contains(NodeId(4)));
        assert_eq!(
            set.peers_of(NodeId(2)).map(|m| m.id.0).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(set.require(NodeId(9)), Err(MembershipError::NotAMember(9)));
    }
}
