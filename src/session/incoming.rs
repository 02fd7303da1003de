//! Inbound QoS 2 flow from one client: packet ids between PUBLISH and PUBREL, so a
//! duplicate PUBLISH is not forwarded again, and our Receive Maximum is enforced.

use std::collections::HashSet;

/// The client exceeded the Receive Maximum we advertised (DISCONNECT 0x93).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("receive maximum exceeded")]
pub struct QuotaExceeded;

#[derive(Debug, Default)]
pub struct Incoming {
    receive_max: usize,
    awaiting_rel: HashSet<u16>,
    /// QoS 1 PUBLISH packets whose PUBACK is not sent yet (it waits for storage or for
    /// room at a subscriber).
    unacked: usize,
}

impl Incoming {
    pub fn new(receive_max: u16, awaiting_rel: impl IntoIterator<Item = u16>) -> Self {
        Incoming {
            receive_max: usize::from(receive_max),
            awaiting_rel: awaiting_rel.into_iter().collect(),
            unacked: 0,
        }
    }

    /// A QoS 1 or 2 PUBLISH arrives: is there room under our Receive Maximum? Open QoS 2
    /// flows (PUBREL not yet received) and QoS 1 messages not yet acknowledged count.
    pub fn check_quota(&self) -> Result<(), QuotaExceeded> {
        if self.awaiting_rel.len() + self.unacked >= self.receive_max {
            return Err(QuotaExceeded);
        }
        Ok(())
    }

    /// A QoS 1 PUBLISH whose PUBACK is deferred.
    pub fn defer_ack(&mut self) {
        self.unacked += 1;
    }

    /// The deferred PUBACK of a QoS 1 PUBLISH was sent.
    pub fn acked(&mut self) {
        self.unacked = self.unacked.saturating_sub(1);
    }

    /// A QoS 2 PUBLISH: `Ok(true)` if new (forward it), `Ok(false)` if a duplicate of one
    /// not yet released (answer PUBREC, do not forward).
    pub fn publish(&mut self, pkid: u16) -> Result<bool, QuotaExceeded> {
        if self.awaiting_rel.contains(&pkid) {
            return Ok(false);
        }
        self.check_quota()?;
        self.awaiting_rel.insert(pkid);
        Ok(true)
    }

    /// PUBREL: true if the id was known.
    pub fn release(&mut self, pkid: u16) -> bool {
        self.awaiting_rel.remove(&pkid)
    }

    pub fn awaiting(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.awaiting_rel.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_not_forwarded_until_released() {
        let mut i = Incoming::new(2, []);
        assert_eq!(i.publish(7), Ok(true));
        assert_eq!(i.publish(7), Ok(false));
        assert!(i.release(7));
        assert!(!i.release(7));
        assert_eq!(i.publish(7), Ok(true));
    }

    #[test]
    fn quota() {
        let mut i = Incoming::new(2, [1]);
        assert_eq!(i.publish(2), Ok(true));
        assert_eq!(i.publish(3), Err(QuotaExceeded));
        assert_eq!(i.check_quota(), Err(QuotaExceeded));
        i.release(1);
        assert_eq!(i.check_quota(), Ok(()));
        assert_eq!(i.awaiting(), vec![2]);
        // A QoS 1 message waiting for its PUBACK takes a slot too.
        i.defer_ack();
        assert_eq!(i.check_quota(), Err(QuotaExceeded));
        i.acked();
        assert_eq!(i.check_quota(), Ok(()));
    }
}
