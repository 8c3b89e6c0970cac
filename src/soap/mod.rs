//! SOAP 1.1 / 1.2 (work in progress).

mod classify;
mod client;
mod envelope;
mod error;
mod fault;
mod security;
mod server;
mod version;
mod write;
mod wsdl;

pub use classify::{SoapClassifier, SERVER_FAULT};
pub use client::{ResponseFuture, SoapClient, SoapEnvelopeLayer, SoapRequest, SoapResponse, SOAP_ACTION};
pub use envelope::{Envelope, HeaderBlock, SoapLimits, DEFAULT_MAX_BODY, DEFAULT_MAX_DEPTH};
pub use error::{SoapError, XmlError};
pub use fault::{FaultCode, QualifiedName, SoapFault};
pub use security::{PasswordType, UsernameToken, WsAddressing, WSA_NS, WSSE_NS, WSU_NS};
pub use server::{ServerFuture, SoapOperation, SoapServer, SoapServerLayer};
pub use version::{SoapVersion, SOAP11_ENV_NS, SOAP12_ENV_NS};
pub use write::EnvelopeBody;
pub use wsdl::{
    Wsdl, WsdlAbstractOperation, WsdlBinding, WsdlBindingOperation, WsdlOperation, WsdlPort, WsdlPortType, WsdlService,
    WsdlUrl, WSDL_NS, WSDL_SOAP11_NS, WSDL_SOAP12_NS,
};

#[cfg(test)]
mod tests;
