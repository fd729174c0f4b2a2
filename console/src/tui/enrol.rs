//! The enrol form (`n`): a new site's edge name, an optional group, and
//! how long its one-time code stays valid; checked before anything is
//! sent. The answer (the code and the command to run on the on-prem
//! machine) opens in its own dialog.

use crate::format;

/// The code's lifetime offered by default (the API's default too).
pub(crate) const DEFAULT_TTL: &str = "15m";

/// A field of the form, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnrolField {
    Name,
    Group,
    Ttl,
}

impl EnrolField {
    pub(crate) const ALL: [EnrolField; 3] = [EnrolField::Name, EnrolField::Group, EnrolField::Ttl];

    pub(crate) fn label(self) -> &'static str {
        match self {
            EnrolField::Name => "edge",
            EnrolField::Group => "group",
            EnrolField::Ttl => "valid",
        }
    }

    pub(crate) fn hint(self) -> &'static str {
        match self {
            EnrolField::Name => "the new site's edge id, e.g. branch-7",
            EnrolField::Group => "optional: a group its mappings can name",
            EnrolField::Ttl => "how long the code works, e.g. 15m (at most 7d)",
        }
    }
}

/// What the form asks the cloud agent for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnrolRequest {
    pub(crate) id: String,
    pub(crate) group: Option<String>,
    pub(crate) ttl_secs: u64,
}

/// The form's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnrolForm {
    values: [String; 3],
    pub(crate) focus: EnrolField,
    /// A field's problem, found before sending.
    pub(crate) error: Option<(EnrolField, String)>,
    /// What the cloud agent answered when it refused.
    pub(crate) server_error: Option<String>,
    /// Sent, no answer yet.
    pub(crate) pending: bool,
}

impl Default for EnrolForm {
    fn default() -> Self {
        EnrolForm {
            values: [String::new(), String::new(), DEFAULT_TTL.to_owned()],
            focus: EnrolField::Name,
            error: None,
            server_error: None,
            pending: false,
        }
    }
}

super::form::fields_by_methods!(EnrolForm);

impl EnrolForm {
    pub(crate) fn value(&self, field: EnrolField) -> &str {
        &self.values[field as usize]
    }

    pub(crate) fn on_last(&self) -> bool {
        self.focus == EnrolField::Ttl
    }

    pub(crate) fn input(&mut self, c: char) {
        self.values[self.focus as usize].push(c);
        self.error = None;
    }

    pub(crate) fn backspace(&mut self) {
        self.values[self.focus as usize].pop();
        self.error = None;
    }

    pub(crate) fn clear(&mut self) {
        self.values[self.focus as usize].clear();
        self.error = None;
    }

    pub(crate) fn move_focus(&mut self, delta: isize) {
        let n = EnrolField::ALL.len() as isize;
        let i = (self.focus as isize + delta).rem_euclid(n) as usize;
        self.focus = EnrolField::ALL[i];
    }

    /// The request, or the first field that is wrong and why.
    pub(crate) fn validate(&self) -> Result<EnrolRequest, (EnrolField, String)> {
        let id = self.value(EnrolField::Name).trim();
        config::check_id("edge", id).map_err(|e| (EnrolField::Name, e.message))?;
        let group = self.value(EnrolField::Group).trim();
        if !group.is_empty() {
            config::check_id("group", group).map_err(|e| (EnrolField::Group, e.message))?;
        }
        let ttl_secs = format::parse_duration(self.value(EnrolField::Ttl))
            .map_err(|message| (EnrolField::Ttl, message))?;
        Ok(EnrolRequest {
            id: id.to_owned(),
            group: (!group.is_empty()).then(|| group.to_owned()),
            ttl_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(name: &str, group: &str, ttl: &str) -> EnrolForm {
        let mut f = EnrolForm::default();
        for (field, text) in [name, group].into_iter().enumerate() {
            f.focus = EnrolField::ALL[field];
            text.chars().for_each(|c| f.input(c));
        }
        f.focus = EnrolField::Ttl;
        f.clear();
        ttl.chars().for_each(|c| f.input(c));
        f
    }

    #[test]
    fn a_good_form_gives_the_request() {
        let request = form("branch-7", "", "1h").validate().expect("valid");
        assert_eq!(request, EnrolRequest { id: "branch-7".into(), group: None, ttl_secs: 3600 });
        let grouped = form(" branch-8 ", "east", "15m").validate().expect("valid");
        assert_eq!((grouped.id.as_str(), grouped.group.as_deref()), ("branch-8", Some("east")));
        assert_eq!(EnrolForm::default().value(EnrolField::Ttl), DEFAULT_TTL);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(form("", "", "15m").validate().unwrap_err().0, EnrolField::Name);
        assert_eq!(form("a b", "", "15m").validate().unwrap_err().0, EnrolField::Name);
        assert_eq!(form("b", "no/slash", "15m").validate().unwrap_err().0, EnrolField::Group);
        assert_eq!(form("b", "", "soon").validate().unwrap_err().0, EnrolField::Ttl);
    }
}
