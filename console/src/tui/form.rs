//! The add-mapping form: its fields, editing, and validation before
//! anything is sent.

use api::MappingSpec;

/// A field of the form, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Name,
    Listen,
    Edge,
    Target,
    Allow,
    Host,
}

impl Field {
    /// Every field, top to bottom.
    pub(crate) const ALL: [Field; 6] =
        [Field::Name, Field::Listen, Field::Edge, Field::Target, Field::Allow, Field::Host];

    /// The label shown left of the value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Listen => "listen",
            Field::Edge => "edge",
            Field::Target => "target",
            Field::Allow => "allow",
            Field::Host => "host",
        }
    }

    /// What to type, shown while the field is empty.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Field::Name => "e.g. web (letters, digits, . _ -)",
            Field::Listen => "public IP:port, e.g. 0.0.0.0:8080",
            Field::Edge => "←/→ to choose",
            Field::Target => "host:port as the edge sees it, e.g. 10.0.0.5:80",
            Field::Allow => "optional: client CIDRs, comma-separated; empty = any",
            Field::Host => "optional, to share listen: a.example.com, *.example.com, *",
        }
    }

    /// The field a [`config::FieldError`] names.
    fn from_error(name: &str) -> Field {
        match name {
            "name" => Field::Name,
            "listen" => Field::Listen,
            "edge" => Field::Edge,
            "target" => Field::Target,
            "host" => Field::Host,
            _ => Field::Allow,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the shared editing keys need of a form (`update::edit`).
pub(crate) trait Fields {
    fn move_focus(&mut self, delta: isize);
    fn input(&mut self, c: char);
    fn backspace(&mut self);
    fn clear(&mut self);
    fn on_last(&self) -> bool;
}

/// [`Fields`] by the form's own methods of those names.
macro_rules! fields_by_methods {
    ($form:ty) => {
        impl $crate::tui::form::Fields for $form {
            fn move_focus(&mut self, delta: isize) {
                <$form>::move_focus(self, delta);
            }
            fn input(&mut self, c: char) {
                <$form>::input(self, c);
            }
            fn backspace(&mut self) {
                <$form>::backspace(self);
            }
            fn clear(&mut self) {
                <$form>::clear(self);
            }
            fn on_last(&self) -> bool {
                <$form>::on_last(self)
            }
        }
    };
}
pub(crate) use fields_by_methods;

fields_by_methods!(AddForm);

/// The form's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddForm {
    values: [String; 6],
    /// The field being edited.
    pub(crate) focus: Field,
    /// The field at fault and why, from the last submit.
    pub(crate) error: Option<(Field, String)>,
    /// What the cloud agent said to the last submit.
    pub(crate) server_error: Option<String>,
    /// Submitted and waiting for the answer.
    pub(crate) pending: bool,
    /// Edge ids to choose from, from the snapshot.
    edges: Vec<String>,
}

impl AddForm {
    /// An empty form; the edge field starts at the first edge.
    pub(crate) fn new(edges: Vec<String>) -> AddForm {
        let mut values: [String; 6] = Default::default();
        if let Some(first) = edges.first() {
            values[Field::Edge.index()] = first.clone();
        }
        AddForm {
            values,
            focus: Field::Name,
            error: None,
            server_error: None,
            pending: false,
            edges,
        }
    }

    /// A field's text.
    pub(crate) fn value(&self, field: Field) -> &str {
        &self.values[field.index()]
    }

    /// The edges to choose from.
    pub(crate) fn edges(&self) -> &[String] {
        &self.edges
    }

    /// Whether the focus is on the last field (Enter submits there).
    pub(crate) fn on_last(&self) -> bool {
        self.focus == Field::Host
    }

    fn edited(&mut self) {
        if self.error.as_ref().is_some_and(|(f, _)| *f == self.focus) {
            self.error = None;
        }
    }

    /// Types a character into the focused field.
    pub(crate) fn input(&mut self, c: char) {
        self.values[self.focus.index()].push(c);
        self.edited();
    }

    /// Deletes the last character of the focused field.
    pub(crate) fn backspace(&mut self) {
        self.values[self.focus.index()].pop();
        self.edited();
    }

    /// Empties the focused field.
    pub(crate) fn clear(&mut self) {
        self.values[self.focus.index()].clear();
        self.edited();
    }

    /// Moves the focus down (`1`) or up (`-1`), wrapping.
    pub(crate) fn move_focus(&mut self, delta: isize) {
        let n = Field::ALL.len() as isize;
        let i = (self.focus.index() as isize + delta).rem_euclid(n);
        self.focus = Field::ALL[i as usize];
    }

    /// On the edge field, picks the next (`1`) or previous (`-1`) edge.
    pub(crate) fn cycle_edge(&mut self, delta: isize) {
        if self.focus != Field::Edge || self.edges.is_empty() {
            return;
        }
        let current = self.edges.iter().position(|e| *e == self.values[Field::Edge.index()]);
        let n = self.edges.len() as isize;
        let next = match current {
            Some(i) => (i as isize + delta).rem_euclid(n),
            None if delta < 0 => n - 1,
            None => 0,
        };
        self.values[Field::Edge.index()] = self.edges[next as usize].clone();
        self.edited();
    }

    /// The client networks, split at commas.
    fn allow(&self) -> Vec<String> {
        self.value(Field::Allow)
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checks every field as the cloud agent would, and that the edge is
    /// one the snapshot knows (when there is a snapshot).
    ///
    /// # Errors
    /// The first field at fault and what is wrong with it.
    pub(crate) fn validate(&self) -> Result<MappingSpec, (Field, String)> {
        let [name, listen, edge, target, _, host] = &self.values;
        let (name, listen, edge, target) = (name.trim(), listen.trim(), edge.trim(), target.trim());
        let allow = self.allow();
        config::MappingConfig::from_parts(name, listen, edge, target, &allow, None)
            .map_err(|e| (Field::from_error(e.field), e.message))?;
        let host = Some(host.trim()).filter(|h| !h.is_empty());
        if let Some(Err(why)) = host.map(str::parse::<config::HostPattern>) {
            return Err((Field::Host, why));
        }
        if !self.edges.is_empty() && !self.edges.iter().any(|e| e == edge) {
            let known = self.edges.join(", ");
            return Err((Field::Edge, format!("unknown edge \"{edge}\": expected one of {known}")));
        }
        Ok(MappingSpec {
            name: name.to_owned(),
            listen: listen.to_owned(),
            edge: edge.to_owned(),
            target: target.to_owned(),
            allow,
            host: host.map(str::to_owned),
            ..MappingSpec::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(values: [&str; 5]) -> AddForm {
        filled_with_host(values, "")
    }

    fn filled_with_host(values: [&str; 5], host: &str) -> AddForm {
        let mut form = AddForm::new(vec!["site-a".into(), "site-b".into()]);
        let values = values.into_iter().chain([host]);
        for (field, value) in Field::ALL.into_iter().zip(values) {
            form.focus = field;
            form.clear();
            value.chars().for_each(|c| form.input(c));
        }
        form
    }

    #[test]
    fn a_host_is_optional_and_checked_as_the_cloud_would() {
        let base = ["web", "0.0.0.0:443", "site-a", "10.0.0.5:443", ""];
        assert_eq!(filled(base).validate().unwrap().host, None);
        let spec = filled_with_host(base, " *.example.com ").validate().unwrap();
        assert_eq!(spec.host.as_deref(), Some("*.example.com"));
        let (field, why) = filled_with_host(base, "a.example.com:443").validate().unwrap_err();
        assert_eq!(field, Field::Host);
        assert!(why.contains("no port"), "{why}");
    }

    #[test]
    fn a_good_form_gives_the_spec() {
        let form =
            filled(["web", "0.0.0.0:8080", "site-b", "10.0.0.5:80", " 10.0.0.0/8, ,1.2.3.4"]);
        let spec = form.validate().unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.edge, "site-b");
        assert_eq!(spec.allow, ["10.0.0.0/8", "1.2.3.4"]);
    }

    #[test]
    fn errors_name_the_field() {
        let form = filled(["web", "0.0.0.0:8080", "site-a", "db", ""]);
        let (field, message) = form.validate().unwrap_err();
        assert_eq!(field, Field::Target);
        assert!(message.contains("missing port"), "{message}");
        let form = filled(["web", "0.0.0.0:8080", "site-c", "db:5432", ""]);
        let (field, message) = form.validate().unwrap_err();
        assert_eq!(field, Field::Edge);
        assert_eq!(message, "unknown edge \"site-c\": expected one of site-a, site-b");
        let (field, _) = filled(["my web", "", "", "", ""]).validate().unwrap_err();
        assert_eq!(field, Field::Name);
        let (field, _) =
            filled(["w", "1.2.3.4:5", "site-a", "h:1", "10.0.0.0/33"]).validate().unwrap_err();
        assert_eq!(field, Field::Allow);
    }

    #[test]
    fn edges_cycle_and_focus_wraps() {
        let mut form = AddForm::new(vec!["site-a".into(), "site-b".into()]);
        assert_eq!(form.value(Field::Edge), "site-a");
        form.cycle_edge(1);
        assert_eq!(form.value(Field::Edge), "site-a", "only on the edge field");
        form.move_focus(-1);
        assert_eq!(form.focus, Field::Host);
        form.move_focus(-3);
        assert_eq!(form.focus, Field::Edge);
        form.cycle_edge(1);
        assert_eq!(form.value(Field::Edge), "site-b");
        form.cycle_edge(1);
        assert_eq!(form.value(Field::Edge), "site-a");
        form.cycle_edge(-1);
        assert_eq!(form.value(Field::Edge), "site-b");
    }
}
