//! The design presets: `seed` (the Nov 2020 `KVM_CREATE_IOREGIONFD` document), `rfc-v3` (the code
//! posted in Feb 2021, defects included) and `proposed` (ours).
//!
//! At this stage of the crate only the mainline bus is modelled, which all three designs share;
//! the knobs of each preset arrive with the ioregion table.
//!
//! ```
//! use ioregionfd_model::design::Design;
//! assert_eq!(Design::from_name("rfc-v3"), Some(Design::RfcV3));
//! assert_eq!(Design::Proposed.name(), "proposed");
//! ```

use std::fmt;

/// A design preset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Design {
    /// The Nov 2020 API document (`KVM_CREATE_IOREGIONFD`).
    Seed,
    /// The RFC v3 code (Feb 2021), reproduced as posted.
    RfcV3,
    /// Ours: every invariant of the catalogue holds.
    #[default]
    Proposed,
}

impl Design {
    /// Every preset.
    pub const ALL: [Design; 3] = [Design::Seed, Design::RfcV3, Design::Proposed];

    /// Name as the CLI writes it.
    pub fn name(self) -> &'static str {
        match self {
            Design::Seed => "seed",
            Design::RfcV3 => "rfc-v3",
            Design::Proposed => "proposed",
        }
    }

    /// The preset with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Design> {
        Design::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for Design {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
