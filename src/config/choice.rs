//! Case-insensitive string choices (`tls = "STARTTLS"` is fine) whose errors list the valid values.
//! Serialisation stays the derived lower-case form.

/// Implements `Deserialize`, `CHOICES` and `as_choice` for a fieldless enum from its spellings.
macro_rules! choices {
    ($t:ident { $($v:ident = $s:literal),+ $(,)? }) => {
        impl $t {
            /// Every accepted spelling, as written in the config file.
            pub const CHOICES: &'static [&'static str] = &[$($s),+];

            /// The config-file spelling (also what logs and JSON show; never the Rust name).
            pub fn as_choice(self) -> &'static str {
                match self {
                    $($t::$v => $s,)+
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_choice())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let given = String::deserialize(d)?;
                match given.trim().to_ascii_lowercase().as_str() {
                    $($s => Ok($t::$v),)+
                    _ => Err(serde::de::Error::custom(format!(
                        "`{given}` is not a valid value; valid values: {} (any letter case)",
                        Self::CHOICES.join(", ")
                    ))),
                }
            }
        }
    };
}

pub(crate) use choices;
