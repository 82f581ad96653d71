//! The scenario, decided before the run and deterministic for a seed: who each connection is
//! (sub, role, orgs, tenant and contractor ids), what each published event is (org and routing
//! fields), and therefore, through the gateway's own `Policy`, exactly which connection must
//! receive which event.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Context;
use event_gateway::auth::Claims;
use event_gateway::event::{Envelope, Event, OrgId};
use event_gateway::policy::Policy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::payload::Payload;
use crate::tally::SeqSet;

/// The event type every bench event carries.
pub const EVENT_TYPE: &str = "bench.tick";
pub const EVENT_TYPE_BYTES: &[u8] = EVENT_TYPE.as_bytes();

/// Tenant and contractor ids per org in the mixed scenario.
const TENANTS_PER_ORG: usize = 4;
const CONTRACTORS_PER_ORG: usize = 4;

/// How roles are given out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Roles {
    /// Every connection is `ops`: it sees every event of its orgs (pure fan-out).
    Ops,
    /// A quarter each of landlord, tenant, contractor and ops, with routing fields on every
    /// event so the policy filters.
    Mixed,
    Landlord,
    Tenant,
    Contractor,
}

const MIXED_ROLES: [&str; 4] = ["landlord", "tenant", "contractor", "ops"];

/// One connection's identity.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    pub sub: String,
    pub role: &'static str,
    /// Indexes into `Plan::orgs`.
    pub orgs: Vec<u32>,
    pub tenant_id: Option<String>,
    pub contractor_id: Option<String>,
}

/// One published event's routing.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub org: u32,
    pub landlord_id: String,
    pub tenant_id: String,
    pub contractor_id: String,
    pub user_ids: Vec<String>,
}

#[derive(Debug)]
pub struct Plan {
    pub orgs: Vec<String>,
    pub conns: Vec<ConnSpec>,
    /// Indexed by sequence number.
    pub events: Vec<EventSpec>,
    /// What each event's `data` holds besides `seq` and `ts`.
    pub payload: Payload,
}

pub struct PlanOptions {
    pub connections: usize,
    pub orgs: usize,
    pub orgs_per_conn: usize,
    pub roles: Roles,
    pub events: usize,
    pub payload: Payload,
    pub org_prefix: String,
    pub seed: u64,
}

impl Plan {
    pub fn build(options: &PlanOptions) -> Self {
        let org_count = options.orgs.max(1);
        let orgs: Vec<String> = (0..org_count)
            .map(|k| format!("{}{k}", options.org_prefix))
            .collect();
        let tenant = |org: usize, j: usize| format!("bench-t{org}-{}", j % TENANTS_PER_ORG);
        let contractor = |org: usize, j: usize| format!("bench-c{org}-{}", j % CONTRACTORS_PER_ORG);
        let conns: Vec<ConnSpec> = (0..options.connections)
            .map(|i| {
                let home = i % org_count;
                // The i-th connection is the j-th of its home org.
                let j = i / org_count;
                let role = match options.roles {
                    Roles::Ops => "ops",
                    Roles::Mixed => MIXED_ROLES[j % MIXED_ROLES.len()],
                    Roles::Landlord => "landlord",
                    Roles::Tenant => "tenant",
                    Roles::Contractor => "contractor",
                };
                let mut conn_orgs: Vec<u32> = Vec::new();
                for step in 0..options.orgs_per_conn.clamp(1, org_count) {
                    conn_orgs.push(((home + step) % org_count) as u32);
                }
                ConnSpec {
                    sub: format!("bench-u{i}"),
                    role,
                    orgs: conn_orgs,
                    tenant_id: (role == "tenant").then(|| tenant(home, j / MIXED_ROLES.len())),
                    contractor_id: (role == "contractor").then(|| contractor(home, j / MIXED_ROLES.len())),
                }
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(options.seed);
        let events = (0..options.events)
            .map(|seq| {
                let org = seq % org_count;
                let user_ids = if rng.random_bool(0.2) && options.connections > 0 {
                    // A connection whose home org is this one, so the `user` scope can match.
                    let members = options.connections.div_ceil(org_count).max(1);
                    let j = rng.random_range(0..members);
                    let i = (j * org_count + org).min(options.connections - 1);
                    vec![format!("bench-u{i}")]
                } else {
                    Vec::new()
                };
                EventSpec {
                    org: org as u32,
                    landlord_id: if rng.random_bool(0.5) {
                        orgs[org].clone()
                    } else {
                        "bench-landlord-elsewhere".to_string()
                    },
                    // Half of the ids name a tenant (contractor) that has a connection.
                    tenant_id: format!("bench-t{org}-{}", rng.random_range(0..TENANTS_PER_ORG * 2)),
                    contractor_id: format!("bench-c{org}-{}", rng.random_range(0..CONTRACTORS_PER_ORG * 2)),
                    user_ids,
                }
            })
            .collect();
        Self {
            orgs,
            conns,
            events,
            payload: options.payload.clone(),
        }
    }

    /// The org index of each sequence number, for the clients' per-org order check.
    pub fn event_orgs(&self) -> Vec<u32> {
        self.events.iter().map(|event| event.org).collect()
    }

    /// Appends the bench payload (`data`) of event `seq` sent at `ts` (ns since the epoch).
    pub fn write_data(&self, out: &mut String, seq: u64, ts: u64) {
        self.payload.write(out, seq, ts);
    }

    /// Appends the full envelope of event `seq` sent at `ts`.
    pub fn write_envelope(&self, out: &mut String, seq: u64, ts: u64) {
        let event = &self.events[seq as usize];
        let user_ids = event
            .user_ids
            .iter()
            .map(|user| format!("\"{user}\""))
            .collect::<Vec<_>>()
            .join(",");
        let _ = write!(
            out,
            "{{\"type\":\"{EVENT_TYPE}\",\"orgId\":\"{}\",\"landlordId\":\"{}\",\"tenantId\":\"{}\",\
             \"contractorId\":\"{}\",\"userIds\":[{user_ids}],\"data\":",
            self.orgs[event.org as usize], event.landlord_id, event.tenant_id, event.contractor_id
        );
        self.write_data(out, seq, ts);
        out.push('}');
    }

    /// The claims the gateway will verify for connection `index`.
    pub fn claims(&self, index: usize) -> anyhow::Result<Claims> {
        let conn = &self.conns[index];
        Ok(Claims {
            sub: conn.sub.clone(),
            role: conn.role.to_string(),
            orgs: conn
                .orgs
                .iter()
                .map(|&org| OrgId::parse(&self.orgs[org as usize]))
                .collect::<Result<_, _>>()
                .context("org ids of the plan are valid")?,
            tenant_id: conn.tenant_id.clone(),
            contractor_id: conn.contractor_id.clone(),
            exp: u64::MAX,
        })
    }

    /// For each connection in `indexes`, the set of sequence numbers it must receive if every
    /// planned event is published: `Some(policy)` applies the gateway's policy, `None` (a
    /// target without one, such as Nchan) expects every event of the connection's orgs.
    pub fn expectations(&self, policy: Option<&Policy>, indexes: &[usize]) -> anyhow::Result<Vec<SeqSet>> {
        let mut by_org: HashMap<u32, Vec<u64>> = HashMap::new();
        for (seq, event) in self.events.iter().enumerate() {
            by_org.entry(event.org).or_default().push(seq as u64);
        }
        let events: Vec<Event> = match policy {
            Some(_) => (0..self.events.len() as u64)
                .map(|seq| self.gateway_event(seq))
                .collect::<anyhow::Result<_>>()?,
            None => Vec::new(),
        };
        indexes
            .iter()
            .map(|&index| {
                let viewer = match policy {
                    Some(policy) => Some(
                        policy
                            .viewer(&self.claims(index)?, None)
                            .map_err(|e| anyhow::anyhow!("connection {index}: {e}"))?,
                    ),
                    None => None,
                };
                let mut expected = SeqSet::default();
                for org in &self.conns[index].orgs {
                    for &seq in by_org.get(org).map(Vec::as_slice).unwrap_or_default() {
                        if viewer
                            .as_ref()
                            .is_none_or(|viewer| viewer.may_see(&events[seq as usize]))
                        {
                            expected.insert(seq);
                        }
                    }
                }
                Ok(expected)
            })
            .collect()
    }

    /// Event `seq` as the gateway decodes it (routing is all the policy reads).
    fn gateway_event(&self, seq: u64) -> anyhow::Result<Event> {
        let mut raw = String::new();
        self.write_envelope(&mut raw, seq, 0);
        let envelope = Envelope::parse(raw.as_bytes(), usize::MAX)
            .map_err(|e| anyhow::anyhow!("bench envelope {seq} does not parse: {e}"))?;
        let org = OrgId::parse(&self.orgs[self.events[seq as usize].org as usize])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Event::new(org, None, envelope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_gateway::settings::Settings;

    fn policy() -> Policy {
        let settings = Settings::load_from(None, Some(HashMap::new())).expect("defaults load");
        Policy::new(settings.policy.roles)
    }

    fn options(roles: Roles) -> PlanOptions {
        PlanOptions {
            connections: 40,
            orgs: 5,
            orgs_per_conn: 1,
            roles,
            events: 200,
            payload: Payload::pad(3),
            org_prefix: "o".into(),
            seed: 7,
        }
    }

    #[test]
    fn envelopes_are_valid_and_carry_seq_and_ts_first() {
        let plan = Plan::build(&options(Roles::Mixed));
        let mut raw = String::new();
        plan.write_envelope(&mut raw, 3, 99);
        let envelope = Envelope::parse(raw.as_bytes(), 65536).expect("valid envelope");
        assert_eq!(envelope.data, "{\"seq\":3,\"ts\":99,\"pad\":\"xxx\"}");
        assert_eq!(envelope.org.map(|o| o.to_string()), Some("o3".to_string()));
    }

    #[test]
    fn ops_expect_every_event_of_their_org() {
        let plan = Plan::build(&options(Roles::Ops));
        let expected = plan.expectations(Some(&policy()), &[0, 6]).expect("expectations");
        // Connection 0 lives in org 0, connection 6 in org 1; events go round-robin over 5 orgs.
        assert_eq!(expected[0].len(), 40);
        assert!(expected[0].contains(0) && expected[0].contains(5) && !expected[0].contains(1));
        assert!(expected[1].contains(1) && !expected[1].contains(0));
    }

    #[test]
    fn mixed_roles_are_filtered_by_the_policy() {
        let plan = Plan::build(&options(Roles::Mixed));
        let all: Vec<usize> = (0..plan.conns.len()).collect();
        let with_policy = plan.expectations(Some(&policy()), &all).expect("expectations");
        let without = plan.expectations(None, &all).expect("expectations");
        let filtered: u64 = with_policy.iter().map(SeqSet::len).sum();
        let everything: u64 = without.iter().map(SeqSet::len).sum();
        assert_eq!(everything, 40 * 40);
        assert!(
            filtered > 0 && filtered < everything / 2,
            "{filtered} of {everything}"
        );
        for (index, conn) in plan.conns.iter().enumerate() {
            if conn.role == "ops" {
                assert_eq!(with_policy[index], without[index]);
            } else {
                assert!(with_policy[index].len() < without[index].len());
            }
        }
    }
}
